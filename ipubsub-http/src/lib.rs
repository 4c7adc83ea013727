//! The HTTP adapter of ipubsub: the v1 API of DESIGN §2 on hyper 1.
//!
//! It turns requests into calls on an [`ipubsub_core::Engine`], applies the timeouts the core
//! leaves to its caller, asks the cluster which node owns a stream, and is the only place
//! where errors become statuses and stable error codes ([`ErrorCode`]).
//!
//! # Layout
//! - [`App`]: routing and shared state; `App::handle` answers one request.
//! - [`serve`]: the accept loop and graceful shutdown; `serve_tls` and the `tls` module
//!   (feature `tls`): the same over HTTPS, and forwarding to members over HTTPS.
//! - [`HttpConfig`]: limits, defaults and access rules; [`Cors`]: which pages of other
//!   origins may call the API.
//! - [`Auth`], [`TokenGrant`]: bearer tokens and what each may do.
//! - [`ApiError`], [`ErrorCode`]: the error answers.
//! - [`Metrics`]: what `GET /metrics` shows.
//! - `send`, `receive`: one module per endpoint, parsing and running it; `sse`: a receive as
//!   Server-Sent Events ([`ApiBody`] carries them).
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use ipubsub_cluster::{Cluster, Node, NodeId};
//! use ipubsub_core::Engine;
//! use ipubsub_http::{App, HttpConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cluster = Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:16681".parse()?));
//! let app = App::new(Engine::default(), None, cluster, HttpConfig::default());
//! let send = hyper::Request::post("/api/v1/streams/send")
//!     .body(Full::new(Bytes::from(r#"{"streamId":"s","messageUuid":"m1","message":{"hi":1}}"#)))?;
//! assert_eq!(app.handle(send).await.status(), 200);
//! let receive = hyper::Request::get("/api/v1/streams/receive?streamId=s&timeoutSeconds=0")
//!     .body(Full::new(Bytes::new()))?;
//! let body = app.handle(receive).await.into_body().collect().await?.to_bytes();
//! assert!(body.starts_with(br#"{"messageUuid":"m1","message":{"hi":1}"#));
//! # Ok(())
//! # }
//! ```

mod acks;
mod adoptions;
mod auth;
mod body;
mod body_budget;
mod config;
mod cors;
mod credentials;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handoff;
mod malformed;
mod metrics;
mod ownership;
mod pacing;
mod readiness;
mod rebalance;
mod receive;
mod send;
mod server;
mod service;
mod signal;
mod sse;
mod store_clock;
#[cfg(feature = "tls")]
pub mod tls;

pub use auth::{Auth, AuthError, MIN_TOKEN_LEN, TokenGrant};
pub use body::{ApiBody, BodyError};
pub use config::{Http2Config, HttpConfig};
pub use cors::{BadOrigin, Cors};
pub use credentials::Credentials;
pub use error::{ApiError, ErrorCode};
pub use ipubsub_cluster::PeerHttp;
pub use metrics::Metrics;
pub use ownership::{follow_ownership, release_moved};
pub use readiness::Readiness;
pub use rebalance::{
    ATTEMPTS, HandOff, HandOffCounts, Item, Moving, Rebalancer, STRAY_GRACE, Strays,
};
pub use server::serve;
#[cfg(feature = "tls")]
pub use server::serve_tls;
pub use service::{App, LEASE_TICK};
pub use store_clock::{ServerClock, follow_store_clock, sync_clock};
