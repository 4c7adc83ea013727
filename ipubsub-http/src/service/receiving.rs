//! `GET /api/v1/streams/receive`: checked, then answered from the owner, from here, or as an
//! event stream.

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use ipubsub_cluster::Route;
use ipubsub_core::ResumeToken;

use super::forwarding::passed_through;
use super::{App, CUT_RECEIVE, Hop, RECEIVE_PATH, Work, json};
use crate::auth::Permission;
use crate::body::ApiBody;
use crate::error::ApiError;
use crate::{receive, sse};

impl App {
    /// `GET /api/v1/streams/receive`. What the request says is read before the work is
    /// made, so that the work (which a waiting receive keeps for as long as it waits) holds
    /// none of the request; a request that fails its checks is answered without any.
    pub(super) fn receive<B>(&self, request: Request<B>, id: &HeaderValue) -> Work {
        let Asked {
            hop,
            receive,
            events,
            target,
        } = match self.receive_asked(request, id) {
            Ok(asked) => asked,
            Err(e) => return Work::Done(Err(e)),
        };
        let app = self.clone();
        // The commonest waiting request: an in-memory long-poll this node serves. Its work
        // holds the engine's wait and the query, none of the routing (hop, path, forward).
        if events.is_none()
            && receive.log_after.is_none()
            && self.owner_elsewhere(&receive.stream, &hop).is_none()
        {
            let mut receive = receive;
            receive.timeout = hop.cap(receive.timeout);
            let work = async move { app.receive_memory(&receive).await };
            return Work::Pending(Box::pin(work), CUT_RECEIVE);
        }
        let work = async move {
            match events {
                // Boxed, as the log read: a waiting in-memory receive (the most numerous
                // request) should not carry the state of the paths it does not take.
                Some(last_event_id) => {
                    let events = app.receive_events(receive, &hop, &target, last_event_id.as_ref());
                    Box::pin(events).await
                }
                None => app.receive_answer(receive, &hop, &target).await,
            }
        };
        Work::Pending(Box::pin(work), CUT_RECEIVE)
    }

    /// What a receive asks, checked: who may make it, its query, and the stream it is for.
    fn receive_asked<B>(&self, request: Request<B>, id: &HeaderValue) -> Result<Asked, ApiError> {
        self.refuse_when_closed()?;
        let inner = &*self.inner;
        let hop = Hop::of(&request, id);
        let grant = self.admit(&request, &hop)?;
        let mut receive =
            receive::parse(request.uri().query(), &inner.config, inner.log.is_some())?;
        if let Some(grant) = grant {
            grant.allow(Permission::Subscribe, receive.stream.as_str())?;
        }
        let events = if sse::wanted(request.headers()) {
            sse::resume(request.headers(), &mut receive)?;
            Some(request.headers().get(&sse::LAST_EVENT_ID).cloned())
        } else {
            None
        };
        // The request's URI and headers share hyper's read buffer: held while this receive
        // waits, they would make hyper allocate a second buffer for the connection. Only the
        // target (for a forward) is kept.
        let target = request
            .uri()
            .path_and_query()
            .map_or(RECEIVE_PATH, |p| p.as_str())
            .to_owned();
        Ok(Asked {
            hop,
            receive,
            events,
            target,
        })
    }

    /// A receive's answer: from the stream's owner, or from here once a message came.
    async fn receive_answer(
        &self,
        mut receive: receive::ReceiveRequest,
        hop: &Hop,
        target: &str,
    ) -> Result<Response<ApiBody>, ApiError> {
        let inner = &*self.inner;
        let empty = Bytes::new();
        let forwarded = Box::pin(self.forward(
            &receive.stream,
            hop,
            Method::GET,
            target,
            &empty,
            receive.timeout,
        ));
        if let Some(answer) = forwarded.await? {
            return Ok(answer);
        }
        // A forwarded receive waits what its caller has left, not a fresh timeout.
        receive.timeout = hop.cap(receive.timeout);
        let batch = receive.max_messages.is_some();
        let body = match (receive.log_after, &inner.log) {
            (None, _) => return self.receive_memory(&receive).await,
            (Some(after), Some(log)) => {
                let owned = || !matches!(inner.cluster.route(&receive.stream), Route::Forward(_));
                let read =
                    receive::run_log(log, &receive, after, inner.config.store_timeout, owned);
                let records = Box::pin(read).await?;
                let tokens = records.iter().map(|r| {
                    let token = ResumeToken::new(&r.stream, r.seq).to_string();
                    (&r.message, Some(token))
                });
                receive::body(batch, tokens.collect::<Vec<_>>().into_iter())
            }
            (Some(_), None) => return Err(inner.config.no_persistence("readFromDB")),
        };
        Ok(json(StatusCode::OK, body))
    }

    /// An in-memory receive's answer, served here.
    async fn receive_memory(
        &self,
        receive: &receive::ReceiveRequest,
    ) -> Result<Response<ApiBody>, ApiError> {
        let body = receive::memory_body(&self.inner.engine, receive).await?;
        Ok(json(StatusCode::OK, body))
    }

    /// A receive asked as an event stream: served here as one ([`sse`]), or by the stream's
    /// owner, whose stream is passed through as it comes.
    async fn receive_events(
        &self,
        mut receive: receive::ReceiveRequest,
        hop: &Hop,
        target: &str,
        last_event_id: Option<&HeaderValue>,
    ) -> Result<Response<ApiBody>, ApiError> {
        let inner = &*self.inner;
        let (forwarder, wait, id) = (&inner.forwarder, receive.timeout, hop.id());
        let relayed = self.forward_with(&receive.stream, hop, |owner| async move {
            forwarder
                .forward_events(&owner, target, wait, id, last_event_id)
                .await
        });
        if let Some(answer) = relayed.await? {
            let (parts, body) = answer.into_parts();
            return Ok(passed_through(parts, ApiBody::relayed(body)));
        }
        receive.timeout = hop.cap(receive.timeout);
        let source = sse::Source {
            engine: inner.engine.clone(),
            log: inner.log.clone(),
            cluster: inner.cluster.clone(),
            store_timeout: inner.config.store_timeout,
            request: receive,
        };
        let events =
            sse::EventStream::new(source, inner.config.sse_heartbeat, inner.closing.fired());
        Ok(sse::response(events))
    }
}

/// A receive as checked before it runs ([`App::receive`]).
struct Asked {
    hop: Hop,
    receive: receive::ReceiveRequest,
    /// Asked as an event stream: with the `Last-Event-ID` it sent, if any.
    events: Option<Option<HeaderValue>>,
    /// Its path and query, for a forward.
    target: String,
}
