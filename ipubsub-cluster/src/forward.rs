//! [`Forwarder`]: hands a request to the node that owns its stream, once, over pooled
//! keep-alive HTTP/1.1 connections.
//!
//! A forwarded request carries [`FORWARDED_HEADER`] (the forwarding node's id), and the owner
//! serves it wherever it lands: a request never takes a second hop, even while two nodes
//! disagree about the ring. [`DEADLINE_HEADER`] carries the time the caller has left, so the
//! owner waits that long and no longer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::node::{Node, NodeId};

/// Marks a request as forwarded; its value is the forwarding node's id.
pub const FORWARDED_HEADER: &str = "x-ipubsub-forwarded";

/// Milliseconds the original caller has left; the owner waits no longer than that.
pub const DEADLINE_HEADER: &str = "x-ipubsub-deadline-ms";

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No connection to the owner could be made: the request was not delivered, so it is
    /// safe to send it elsewhere.
    #[error("cannot connect to node {node}")]
    Unreachable {
        /// The owner.
        node: NodeId,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The exchange broke after the request may have been delivered: retrying could repeat it.
    #[error("the exchange with node {node} broke")]
    Broken {
        /// The owner.
        node: NodeId,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The owner did not answer in time.
    #[error("node {node} did not answer within {waited:?}")]
    Timeout {
        /// The owner.
        node: NodeId,
        /// How long this node waited.
        waited: Duration,
    },
    /// The request could not be built (a bug).
    #[error("cannot build the forwarded request")]
    Request(#[source] hyper::http::Error),
}

/// A pooled HTTP client to the other members. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    local: NodeId,
}

/// Time given to the owner beyond the caller's own wait, to answer and transfer.
const SLACK: Duration = Duration::from_secs(5);

impl Forwarder {
    /// A forwarder for the node `local`.
    pub fn new(local: NodeId) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { client, local }
    }

    /// Sends `method path_and_query` with `body` to `owner` and returns its answer as is.
    /// `wait` is how long the caller's request may wait (its long-poll or blocking time).
    pub async fn forward(
        &self,
        owner: &Node,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        wait: Duration,
    ) -> Result<Response<Bytes>, ForwardError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", owner.http_addr(), path_and_query))
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, self.local.as_str())
            .header(DEADLINE_HEADER, wait.as_millis().to_string())
            .body(Full::new(body))
            .map_err(ForwardError::Request)?;
        let limit = wait + SLACK;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let node = owner.id().clone();
                if e.is_connect() {
                    ForwardError::Unreachable {
                        node,
                        source: Box::new(e),
                    }
                } else {
                    ForwardError::Broken {
                        node,
                        source: Box::new(e),
                    }
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| ForwardError::Broken {
                node: owner.id().clone(),
                source: Box::new(e),
            })?;
            Ok(Response::from_parts(parts, body.to_bytes()))
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ForwardError::Timeout {
                node: owner.id().clone(),
                waited: limit,
            }),
        }
    }
}
