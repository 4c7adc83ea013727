//! Forwarding a request to its stream's owner: the route, the retry on an unreachable
//! owner, and the owner's answer passed through.

use std::time::Duration;

use bytes::Bytes;
use hyper::header;
use hyper::{Method, Response};
use ipubsub_cluster::{ForwardError, Node, Route};
use ipubsub_core::StreamId;

use super::{App, Hop};
use crate::body::ApiBody;
use crate::error::{ApiError, ErrorCode, chain};
use crate::metrics::{ForwardOutcome, Limit};

impl App {
    /// The owner of `stream` when it is another node and the request may still be forwarded:
    /// a request that was forwarded once is served where it lands, never forwarded again.
    pub(super) fn owner_elsewhere(&self, stream: &StreamId, hop: &Hop) -> Option<Node> {
        match self.inner.cluster.route(stream) {
            Route::Forward(_) if hop.forwarded => {
                // Served here anyway; whatever it leaves here is moved on.
                self.inner.strays.note(stream);
                None
            }
            Route::Forward(owner) => Some(owner),
            _ => None,
        }
    }

    /// Forwards the request to the owner of `stream` when that is another node, and passes
    /// its answer through unchanged; `None` when this node serves it. An owner that cannot be
    /// connected to is suspected (left out of this node's ring for a while) and the route is
    /// computed again, once: the request then goes to the next owner, possibly this node.
    pub(super) async fn forward(
        &self,
        stream: &StreamId,
        hop: &Hop,
        method: Method,
        target: &str,
        body: &Bytes,
        wait: Duration,
    ) -> Result<Option<Response<ApiBody>>, ApiError> {
        let forwarder = &self.inner.forwarder;
        let id = hop.id();
        let answer = self.forward_with(stream, hop, |owner| {
            let (method, body) = (method.clone(), body.clone());
            async move {
                forwarder
                    .forward(&owner, method, target, body, wait, id)
                    .await
            }
        });
        Ok(answer.await?.map(|answer| {
            let (parts, body) = answer.into_parts();
            passed_through(parts, ApiBody::from(body))
        }))
    }

    /// [`forward`](Self::forward) with `exchange` as the way to reach the owner.
    pub(super) async fn forward_with<T, F>(
        &self,
        stream: &StreamId,
        hop: &Hop,
        exchange: impl Fn(Node) -> F,
    ) -> Result<Option<Response<T>>, ApiError>
    where
        F: Future<Output = Result<Response<T>, ForwardError>>,
    {
        let id = hop.id();
        let mut retried = false;
        while let Some(owner) = self.owner_elsewhere(stream, hop) {
            // Boxed: the client exchange is a fifth of the size of `handle`'s future, which
            // hyper allocates for every connection, forwarding or not.
            let forwarded = Box::pin(exchange(owner.clone()));
            let metrics = &self.inner.metrics;
            match forwarded.await {
                Ok(answer) => {
                    metrics.forward(ForwardOutcome::Answered);
                    return Ok(Some(answer));
                }
                Err(e @ (ForwardError::Unreachable { .. } | ForwardError::Tls { .. }))
                    if !retried =>
                {
                    // Not delivered, so safe to send elsewhere. A failed handshake is said
                    // louder: two nodes that cannot verify each other split the cluster until
                    // someone fixes their certificates or trust store.
                    if matches!(e, ForwardError::Tls { .. }) {
                        metrics.forward(ForwardOutcome::TlsFailed);
                        tracing::error!(request_id = %id, owner = %owner.id(), error = chain(&e), "owner's TLS handshake failed (check tls.peer_ca_file and tls.peer_server_name): suspecting it and routing again");
                    } else {
                        metrics.forward(ForwardOutcome::Unreachable);
                        tracing::warn!(request_id = %id, owner = %owner.id(), error = chain(&e), "owner unreachable: suspecting it and routing again");
                    }
                    self.inner.cluster.suspect(owner.id(), SUSPICION);
                    retried = true;
                }
                Err(e @ ForwardError::Busy { .. }) => {
                    metrics.forward(ForwardOutcome::Busy);
                    return Err(ApiError::new(ErrorCode::TooManyWaiters, e.to_string())
                        .hit(Limit::Forwarded));
                }
                Err(e) => {
                    metrics.forward(ForwardOutcome::Failed);
                    tracing::warn!(request_id = %id, owner = %owner.id(), error = chain(&e), "forwarding failed");
                    return Err(ApiError::new(
                        ErrorCode::OwnerUnavailable,
                        format!("the node that owns this stream did not answer: {e}"),
                    ));
                }
            }
        }
        Ok(None)
    }
}

/// The answer of a stream's owner as this node gives it: its status, body and the headers
/// that are part of the API.
pub(super) fn passed_through(
    parts: hyper::http::response::Parts,
    body: ApiBody,
) -> Response<ApiBody> {
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    let kept = [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::ALLOW,
        header::CACHE_CONTROL,
    ];
    for name in kept {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    if let Some(value) = parts.headers.get(&super::DUPLICATE_HEADER) {
        response
            .headers_mut()
            .insert(super::DUPLICATE_HEADER.clone(), value.clone());
    }
    response
}

/// How long an owner that could not be reached stays out of this node's ring (gossip
/// usually declares it dead, or alive again, well within that).
pub(super) const SUSPICION: Duration = Duration::from_secs(10);
