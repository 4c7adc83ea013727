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
        }
    }
}
