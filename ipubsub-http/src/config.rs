//! [`HttpConfig`]: the limits and defaults the adapter applies to requests.

use std::time::Duration;

/// Limits and defaults of the HTTP API. `Default` gives the production defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; a larger one is a 413.
    pub max_body_bytes: usize,
    /// Longest stream id accepted, in bytes (at most 256).
    pub max_stream_id_bytes: usize,
    /// Wait of a receive that gives no `timeoutSeconds`.
    pub default_receive_timeout: Duration,
    /// Longest wait a receive or a blocking send may ask for; more is a 400.
    pub max_timeout: Duration,
    /// `inMemoryStreamSize` of a send that gives none.
    pub default_stream_size: u32,
    /// Largest `inMemoryStreamSize` accepted; more is a 400.
    pub max_stream_size: u32,
    /// `dbTTLSeconds` of a persistent send that gives none.
    pub default_ttl: Duration,
    /// Largest `dbTTLSeconds` accepted; more is a 400.
    pub max_ttl: Duration,
    /// Largest `maxMessages` accepted.
    pub max_messages: usize,
    /// How long a persistent send or read may wait for the store before a 503.
    pub store_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_stream_id_bytes: ipubsub_core::MAX_ID_LEN,
            default_receive_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            default_stream_size: 100,
            max_stream_size: 100_000,
            default_ttl: Duration::from_secs(86_400),
            max_ttl: Duration::from_secs(30 * 86_400),
            max_messages: 1000,
            store_timeout: Duration::from_secs(10),
        }
    }
}
