//! Implementations of [`ipubsub_core::MessageStore`], the persistent log's storage.
//!
//! Each backend lives in its own module behind its own cargo feature so that a build carries
//! only the database drivers it uses. The [`memory`] store is always built: it is the reference
//! implementation of the contract and what tests run against.
//!
//! # Layout
//! - [`memory`]: [`MemoryStore`], everything in process memory, lost on restart.
//!
//! # Example
//! ```
//! use ipubsub_core::{MessageStore, Seq, StreamId, Timestamp};
//! use ipubsub_storage::MemoryStore;
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! let store = MemoryStore::new();
//! let stream: StreamId = "audit".parse()?;
//! assert_eq!(block_on(store.last_seq(&stream))?, Seq::ZERO);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub mod memory;

pub use memory::MemoryStore;
