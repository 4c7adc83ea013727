//! Implementations of [`ipubsub_core::MessageStore`], the persistent log's storage.
//!
//! Each backend lives in its own module behind its own cargo feature so that a build carries
//! only the database drivers it uses. The [`memory`] store is always built: it is the reference
//! implementation of the contract.
//!
//! # Layout
//! - [`memory`]: [`MemoryStore`], everything in process memory, lost on restart.
//! - `embedded` (feature `embedded`, default): `EmbeddedStore` on fjall, data in a directory.
//! - `sql::postgres` (feature `postgres`): `PostgresStore`, in a PostgreSQL database.
//! - `sql::mysql` (feature `mysql`): `MySqlStore`, in a MySQL or MariaDB database.
//! - `cassandra` (feature `cassandra`): `CassandraStore`, in Apache Cassandra or ScyllaDB.
//! - `mongodb` (feature `mongodb`): `MongoStore`, in MongoDB or a server of its protocol.
//! - `bounded` (with any database backend): `Bounded`, a store whose every call answers
//!   within a time limit.
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

#[cfg(any(feature = "sql", feature = "cassandra", feature = "mongodb"))]
pub mod bounded;
#[cfg(feature = "cassandra")]
pub mod cassandra;
#[cfg(any(feature = "sql", feature = "cassandra", feature = "mongodb"))]
mod convert;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "testsuite")]
pub mod faults;
#[cfg(any(feature = "cassandra", feature = "mongodb"))]
mod high_water;
pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(feature = "sql")]
pub mod sql;
#[cfg(feature = "testsuite")]
pub mod testsuite;

#[cfg(any(feature = "sql", feature = "cassandra", feature = "mongodb"))]
pub use bounded::Bounded;
#[cfg(feature = "cassandra")]
pub use cassandra::{CassandraConfig, CassandraStore};
#[cfg(feature = "embedded")]
pub use embedded::{Durability, EmbeddedConfig, EmbeddedStore};
pub use memory::MemoryStore;
#[cfg(feature = "mongodb")]
pub use mongodb::{MongoConfig, MongoStore};
#[cfg(feature = "sql")]
pub use sql::SqlConfig;
#[cfg(feature = "mysql")]
pub use sql::mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use sql::postgres::PostgresStore;

/// `url` with its password replaced by `***`, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
