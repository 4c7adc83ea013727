//! The runtime-agnostic core of ipubsub: streams, the matching of senders with receivers, log
//! positions and the storage contract.
//!
//! It performs no I/O, spawns nothing and never sleeps. Time comes from a [`Clock`]; waiting is
//! done by the futures it returns, and timeouts are the caller's (wrap the future in your
//! runtime's timeout and call `abandon` when it fires). Any executor drives it.
//!
//! # Layout
//! - [`id`]: validated [`StreamId`] and [`MessageId`].
//! - [`message`]: [`Message`], the sender's exact bytes plus id and timestamp.
//! - [`time`]: [`Timestamp`], [`Clock`], [`SystemClock`], [`ManualClock`], [`OffsetClock`].
//! - [`engine`]: the sharded stream registry, the three in-memory modes, [`SendFuture`] and
//!   [`ReceiveFuture`] with their cancellation guarantees.
//! - [`log`]: [`Log`], the persistent log: group commit, positions, watermark, tail waits.
//! - [`store`]: [`MessageStore`], the persistent log's contract, and [`Seq`] positions.
//! - [`token`]: [`ResumeToken`], positions as opaque, stream-bound, URL-safe text.
//! - [`error`]: [`SendError`], [`ReceiveError`].
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use ipubsub_core::{Engine, Message, MessageId, SendOptions, StreamId};
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//!
//! let engine = Engine::default();
//! let stream: StreamId = "orders".parse()?;
//! let message = Message::new(MessageId::new("m-1")?, Bytes::from_static(b"{\"n\":1}"), engine.now());
//! block_on(engine.send(stream.clone(), message, SendOptions::default()))?;
//!
//! let received = block_on(engine.receive(stream))?;
//! assert_eq!(received.payload().as_ref(), b"{\"n\":1}");
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub mod engine;
pub mod error;
pub mod id;
mod id_cap;
pub mod log;
pub mod message;
pub mod store;
mod sync;
pub mod time;
pub mod token;

pub use engine::{
    DeadLetter, Drained, Engine, EngineConfig, EngineStats, Expired, HandleError, InFlight,
    LeaseError, LeaseId, Leased, LeasedReceiveFuture, ReceiptHandle, ReceiveFuture, Redrive,
    SendFuture, SendOptions, SendOutcome,
};
pub use error::{ReceiveError, SendError};
pub use id::{IdError, MAX_ID_LEN, MessageId, StreamId};
pub use log::{Append, AppendError, Log, LogConfig, LogStats, ReadBatch, ReadError, Written};
pub use message::Message;
pub use store::{
    Appended, Epoch, FoundId, LogRecord, MessageStore, Seq, StoreError, Tenure, expiry,
};
pub use time::{Clock, ManualClock, OffsetClock, SystemClock, Timestamp};
pub use token::{ResumeToken, TokenError};
