//! The errors of the in-memory engine, one enum per operation.

/// Why a send did not put its message on the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A blocking send gave up before the stream's buffer had room.
    #[error("the stream's buffer stayed full until the send gave up")]
    StreamFull,
    /// A send to a stream without a buffer (size 0) found no receiver to hand the message to.
    #[error("no receiver took the message before the send gave up")]
    NoReceiver,
    /// Creating the stream would pass the node's limit on streams.
    #[error("this node holds its maximum of {max} streams")]
    TooManyStreams {
        /// The limit in force.
        max: usize,
    },
    /// Waiting would pass the node's limit on waiting requests.
    #[error("this node holds its maximum of {max} waiting requests")]
    TooManyWaiters {
        /// The limit in force.
        max: usize,
    },
    /// Taking the message would pass the node's memory budget for held messages
    /// ([`EngineConfig::max_buffered_bytes`](crate::EngineConfig::max_buffered_bytes)): it
    /// was not accepted, and may be sent again once receivers have taken some.
    #[error("this node holds its budget of {max} bytes of messages: the message was not accepted")]
    MemoryLimit {
        /// The budget in force.
        max: usize,
    },
    /// The engine is shutting down and takes no new messages.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The stream moved to another node while this send waited
    /// ([`Engine::drain_streams`](crate::Engine::drain_streams)): its message was not
    /// accepted here, and may be sent again (to the stream's new owner).
    #[error(
        "the stream moved to another node before a receiver took the message; it was not accepted: send it again"
    )]
    Moved,
}

/// Why a receive ended without a message. A receive that simply finds nothing in time is not
/// an error: [`ReceiveFuture::abandon`](crate::ReceiveFuture::abandon) returns `None`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Creating the stream would pass the node's limit on streams.
    #[error("this node holds its maximum of {max} streams")]
    TooManyStreams {
        /// The limit in force.
        max: usize,
    },
    /// Waiting would pass the node's limit on waiting requests.
    #[error("this node holds its maximum of {max} waiting requests")]
    TooManyWaiters {
        /// The limit in force.
        max: usize,
    },
    /// The engine is shutting down; the receive was answered without a message.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The stream moved to another node while this receive waited; it was answered without
    /// a message and may wait again (at the stream's new owner).
    #[error("the stream moved to another node")]
    Moved,
}
