//! Runnable examples of ipubsub, and [`JournalStore`]: a storage backend written outside the
//! workspace's storage crate, the way a user writes their own.
//!
//! Run the examples with `cargo run -p ipubsub-examples --example embedded`,
//! `--example http_client` or `--example custom_store`.

pub mod journal_store;

pub use journal_store::JournalStore;
