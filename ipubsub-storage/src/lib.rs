//! Implementations of [`ipubsub_core::MessageStore`], the persistent log's storage.
//!
//! Each backend lives in its own module behind its own cargo feature so that a build carries
//! only the database drivers it uses. The [`memory`] store is always built: it is the reference
//! implementation of the contract.
//!
//! # Layout
//! - [`memory`]: [`MemoryStore`], everything in process memory, lost on restart.
//! - `embedded` (feature `embedded`, default): `EmbeddedStore` on fjall, data in a directory.
//! - `testsuite` (feature `testsuite`): the conformance suite every backend runs, and
//!   `faults::FailingStore` for fault injection.
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

#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "testsuite")]
pub mod faults;
pub mod memory;
#[cfg(feature = "testsuite")]
pub mod testsuite;

#[cfg(feature = "embedded")]
pub use embedded::{Durability, EmbeddedConfig, EmbeddedStore};
pub use memory::MemoryStore;
