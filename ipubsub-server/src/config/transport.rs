//! `http.http2:` and `http.sse:`: the limits of HTTP/2 connections, the version spoken to
//! members, and event streams.

use std::time::Duration;

use ipubsub_http::{Http2Config, HttpConfig, PeerHttp};
use serde::{Deserialize, Serialize};

use super::{ConfigError, HttpSection};

/// `http.http2:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Section {
    /// Requests one HTTP/2 connection may have in flight at once.
    pub max_concurrent_streams: u32,
    /// Flow-control window of one request, in bytes.
    pub initial_stream_window_bytes: u32,
    /// Flow-control window of a whole connection, in bytes.
    pub initial_connection_window_bytes: u32,
    /// Largest header list of a request, in bytes as HTTP/2 counts them.
    pub max_header_list_bytes: u32,
    /// How often an HTTP/2 connection is pinged; one that does not answer within that is
    /// closed.
    pub keep_alive_interval_seconds: u64,
    /// Forward to members over HTTP/2 (one connection per member). Set false while the
    /// cluster still has members of a build without HTTP/2: they are then reached over
    /// HTTP/1.1.
    pub forward_to_members: bool,
}

impl Default for Http2Section {
    fn default() -> Self {
        let d = Http2Config::default();
        Self {
            max_concurrent_streams: d.max_concurrent_streams,
            initial_stream_window_bytes: d.initial_stream_window,
            initial_connection_window_bytes: d.initial_connection_window,
            max_header_list_bytes: d.max_header_list_size,
            keep_alive_interval_seconds: d.keep_alive_interval.as_secs(),
            forward_to_members: HttpConfig::default().peer_http == PeerHttp::Http2,
        }
    }
}

/// `http.sse:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseSection {
    /// How often an event stream with nothing to send sends a comment, so that proxies do
    /// not close it as idle.
    pub heartbeat_seconds: u64,
}

impl Default for SseSection {
    fn default() -> Self {
        Self {
            heartbeat_seconds: HttpConfig::default().sse_heartbeat.as_secs(),
        }
    }
}

impl HttpSection {
    /// Refuses limits HTTP/2 cannot work with (RFC 9113 §6.5.2 bounds the windows).
    pub(super) fn validate_transport(&self) -> Result<(), ConfigError> {
        let h2 = &self.http2;
        let window = 65_535..=i32::MAX as u32;
        if h2.max_concurrent_streams == 0
            || h2.max_header_list_bytes == 0
            || h2.keep_alive_interval_seconds == 0
            || self.sse.heartbeat_seconds == 0
        {
            return Err(ConfigError::Invalid(
                "http.http2.max_concurrent_streams, http.http2.max_header_list_bytes, http.http2.keep_alive_interval_seconds and http.sse.heartbeat_seconds must be above 0".into(),
            ));
        }
        if !window.contains(&h2.initial_stream_window_bytes)
            || !window.contains(&h2.initial_connection_window_bytes)
        {
            return Err(ConfigError::Invalid(format!(
                "http.http2.initial_stream_window_bytes and http.http2.initial_connection_window_bytes must be {} to {}",
                window.start(),
                window.end()
            )));
        }
        Ok(())
    }

    /// Sets `c`'s HTTP/2 and event-stream settings.
    pub(super) fn apply_transport(&self, c: &mut HttpConfig) {
        let h2 = &self.http2;
        let mut limits = Http2Config::default();
        limits.max_concurrent_streams = h2.max_concurrent_streams;
        limits.initial_stream_window = h2.initial_stream_window_bytes;
        limits.initial_connection_window = h2.initial_connection_window_bytes;
        limits.max_header_list_size = h2.max_header_list_bytes;
        limits.keep_alive_interval = Duration::from_secs(h2.keep_alive_interval_seconds);
        c.http2 = limits;
        c.peer_http = if h2.forward_to_members {
            PeerHttp::Http2
        } else {
            PeerHttp::Http1
        };
        c.sse_heartbeat = Duration::from_secs(self.sse.heartbeat_seconds);
    }
}
