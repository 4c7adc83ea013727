//! How a request is answered: routed first ([`App::handle`]), its answer made on the spot or
//! by boxed work, and every answer finished the same way (errors as JSON, CORS, metrics, the
//! request id).

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::Either;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{
    App, CLUSTER_PATH, CUT_LEASE, CUT_SEND, CUT_SEND_BATCH, Hop, METRICS_PATH, RECEIVE_PATH,
    REQUEST_ID, SEND_PATH, batch, error_response, json, not_allowed,
};
use crate::acks;
use crate::body::ApiBody;
use crate::cors::Cors;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Route as MetricRoute;

impl App {
    /// Answers one request. Never fails: every error becomes a JSON error response. Every
    /// answer carries the request's id
    /// ([`REQUEST_ID_HEADER`](ipubsub_cluster::REQUEST_ID_HEADER)): the caller's, when it
    /// sent a valid one (1 to 128 of `A-Z a-z 0-9 . _ : -`), else one made up here.
    ///
    /// The request is routed before the answer's future is made, and the future owns what it
    /// needs (a handle on the app, the request's id): hyper keeps that future for as long as
    /// the request is in flight (a waiting receive: up to its timeout), so it holds neither
    /// the request nor the routing's state, only the boxed work of the route taken.
    pub fn handle<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Response<ApiBody>> + Send + use<B>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let id_value = self.request_id(&request);
        let origin = match &self.inner.config.cors {
            Cors::Off => None,
            _ => request.headers().get(header::ORIGIN).cloned(),
        };
        let (route, work) = self.route(request, &id_value);
        let (work, what) = match work {
            Work::Done(result) => {
                let answer = self.answer(route, result, origin.as_ref(), id_value, started);
                return Either::Left(std::future::ready(answer));
            }
            Work::Pending(work, what) => (work, what),
        };
        let app = self.clone();
        Either::Right(async move {
            let result = app.unless_cut(work, what).await;
            app.answer(route, result, origin.as_ref(), id_value, started)
        })
    }

    /// Which route `request` takes, and its answer or the work that will make it.
    fn route<B>(&self, request: Request<B>, id_value: &HeaderValue) -> (MetricRoute, Work)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let cors = &self.inner.config.cors;
        let path = request.uri().path();
        match (path, request.method()) {
            (
                SEND_PATH
                | batch::SEND_BATCH_PATH
                | acks::ACK_PATH
                | acks::NACK_PATH
                | acks::EXTEND_PATH
                | RECEIVE_PATH
                | CLUSTER_PATH
                | "/health"
                | "/ready"
                | METRICS_PATH
                | "/",
                &Method::OPTIONS,
            ) if cors.is_preflight(request.headers()) => {
                let mut answer = Response::new(ApiBody::from(Bytes::new()));
                *answer.status_mut() = StatusCode::NO_CONTENT;
                cors.preflight(request.headers(), answer.headers_mut());
                (MetricRoute::Preflight, Work::Done(Ok(answer)))
            }
            // Boxed: hyper keeps one allocation the size of the answer's future for every
            // connection (its in-flight slot); unboxed, the send path alone would make that
            // 1.4 KB. Each box owns what its work borrows.
            (SEND_PATH, &Method::POST) => {
                let (app, id) = (self.clone(), id_value.clone());
                let work = async move { app.send(request, &id).await };
                (MetricRoute::Send, Work::Pending(Box::pin(work), CUT_SEND))
            }
            (batch::SEND_BATCH_PATH, &Method::POST) => {
                let (app, id) = (self.clone(), id_value.clone());
                let work = async move { app.send_batch(request, &id).await };
                (
                    MetricRoute::SendBatch,
                    Work::Pending(Box::pin(work), CUT_SEND_BATCH),
                )
            }
            (acks::ACK_PATH | acks::NACK_PATH | acks::EXTEND_PATH, &Method::POST) => {
                let verb = acks::Verb::of(path).unwrap_or(acks::Verb::Ack);
                let (app, id) = (self.clone(), id_value.clone());
                let work = async move { app.lease_verb(request, &id, verb).await };
                (MetricRoute::Lease, Work::Pending(Box::pin(work), CUT_LEASE))
            }
            (crate::handoff::REMEMBERED_PATH, &Method::POST) => {
                let (app, id) = (self.clone(), id_value.clone());
                let work = async move { app.adopt_remembered(request, &id).await };
                (MetricRoute::Send, Work::Pending(Box::pin(work), CUT_SEND))
            }
            (RECEIVE_PATH, &Method::GET) => (MetricRoute::Receive, self.receive(request, id_value)),
            ("/health", &Method::GET) => (
                MetricRoute::Health,
                Work::Done(Ok(json(
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ok\"}"),
                ))),
            ),
            ("/ready", &Method::GET) => (
                MetricRoute::Ready,
                Work::Done(match self.inner.readiness.check() {
                    Ok(()) => Ok(json(
                        StatusCode::OK,
                        Bytes::from_static(b"{\"status\":\"ready\"}"),
                    )),
                    Err(reason) => Err(ApiError::new(ErrorCode::NotReady, reason)),
                }),
            ),
            (METRICS_PATH, &Method::GET) => {
                (MetricRoute::Metrics, Work::Done(Ok(self.metrics_answer())))
            }
            (CLUSTER_PATH, &Method::GET) => (
                MetricRoute::Cluster,
                Work::Done(
                    self.admit(&request, &Hop::of(&request, id_value))
                        .map(|_| json(StatusCode::OK, self.cluster_view())),
                ),
            ),
            ("/", &Method::GET) => (
                MetricRoute::Root,
                Work::Done(Ok(json(StatusCode::OK, self.about()))),
            ),
            (SEND_PATH, _) => (MetricRoute::Send, Work::Done(Err(not_allowed("POST")))),
            (batch::SEND_BATCH_PATH, _) => {
                (MetricRoute::SendBatch, Work::Done(Err(not_allowed("POST"))))
            }
            (RECEIVE_PATH, _) => (MetricRoute::Receive, Work::Done(Err(not_allowed("GET")))),
            (acks::ACK_PATH | acks::NACK_PATH | acks::EXTEND_PATH, _) => {
                (MetricRoute::Lease, Work::Done(Err(not_allowed("POST"))))
            }
            (CLUSTER_PATH | "/health" | "/ready" | METRICS_PATH | "/", _) => {
                (MetricRoute::Unknown, Work::Done(Err(not_allowed("GET"))))
            }
            _ => (
                MetricRoute::Unknown,
                Work::Done(Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no endpoint at {path}"),
                ))),
            ),
        }
    }

    /// The answer to a request that took `route`: errors made JSON (counted and, where they
    /// have a cause, logged), CORS headers, metrics, and the request's id.
    fn answer(
        &self,
        route: MetricRoute,
        result: Result<Response<ApiBody>, ApiError>,
        origin: Option<&HeaderValue>,
        id_value: HeaderValue,
        started: Instant,
    ) -> Response<ApiBody> {
        let id = header_text(&id_value);
        let mut response = result.unwrap_or_else(|e| {
            self.count_error(&e, route);
            if let Some(cause) = &e.log_cause {
                tracing::warn!(request_id = %id, code = e.code.as_str(), %cause, "{}", e.message);
            } else if e.code == ErrorCode::Internal {
                tracing::error!(request_id = %id, message = %e.message, "internal error");
            }
            error_response(&e)
        });
        if route != MetricRoute::Preflight {
            self.inner
                .config
                .cors
                .answer(origin, response.headers_mut());
        }
        let metrics = &self.inner.metrics;
        metrics.request(route, response.status().as_u16(), started.elapsed());
        response.headers_mut().insert(REQUEST_ID.clone(), id_value);
        response.map(|body| body.held_in(&self.inner.bodies))
    }
}

/// A routed request's answer ([`App::route`]): made already, or work still to do (boxed, so
/// that the answer's future is small whichever route it takes), with what to say if the
/// shutdown cuts it short.
pub(super) enum Work {
    Done(Result<Response<ApiBody>, ApiError>),
    Pending(
        Pin<Box<dyn Future<Output = Result<Response<ApiBody>, ApiError>> + Send>>,
        &'static str,
    ),
}

/// A request id's text: ids are checked visible ASCII ([`App::request_id`]), so this never
/// comes out empty for one of them.
pub(super) fn header_text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use ipubsub_cluster::{Cluster, Node, NodeId, REQUEST_ID_HEADER};
    use ipubsub_core::Engine;

    use crate::config::HttpConfig;

    use super::*;

    fn app() -> Result<App, Box<dyn std::error::Error>> {
        let node = Node::new(NodeId::new("n1")?, "127.0.0.1:16681".parse()?);
        Ok(App::new(
            Engine::default(),
            None,
            Cluster::single(node),
            HttpConfig::default(),
        ))
    }

    fn get(uri: &str) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        Request::get(uri).body(Full::new(Bytes::new()))
    }

    /// hyper keeps the answer's future for as long as a request is in flight: 100,000
    /// waiting receives keep 100,000 of them. Routing happens before the future is made, so
    /// it holds neither the request (264 B) nor the routing's state (it was 880 B, with the
    /// request held beside it by the connection's service).
    #[test]
    fn a_waiting_receive_keeps_a_small_future() -> Result<(), Box<dyn std::error::Error>> {
        let app = app()?;
        let answer = app.handle(get("/api/v1/streams/receive?streamId=s&timeoutSeconds=5")?);
        let size = std::mem::size_of_val(&answer);
        assert!(size <= 512, "the answer's future is {size} B");
        // And the boxed work it waits on: the engine's wait, none of the routing (712 B when
        // it kept the hop, the path and the forward's state).
        let id = HeaderValue::from_static("id-1");
        let request = get("/api/v1/streams/receive?streamId=s&timeoutSeconds=5")?;
        let Work::Pending(work, _) = app.route(request, &id).1 else {
            return Err("a receive that waits is work to do".into());
        };
        let size = std::mem::size_of_val(&*work);
        assert!(size <= 512, "the receive's work is {size} B");
        Ok(())
    }

    /// Request ids are new on every answer: marked sensitive, HTTP/2 sends them as literals
    /// and keeps them out of its HPACK table, where each would evict a header that repeats.
    #[tokio::test]
    async fn request_ids_are_sensitive_made_up_or_given() -> Result<(), Box<dyn std::error::Error>>
    {
        let app = app()?;
        let made_up = app.handle(get("/health")?).await;
        let id = made_up.headers().get(&REQUEST_ID).ok_or("no id")?;
        assert!(!id.is_empty());
        assert!(id.is_sensitive());
        let given = Request::get("/health")
            .header(REQUEST_ID_HEADER, "trace-1")
            .body(Full::new(Bytes::new()))?;
        let answer = app.handle(given).await;
        let id = answer.headers().get(&REQUEST_ID).ok_or("no id")?;
        assert_eq!(id, "trace-1");
        assert!(id.is_sensitive());
        Ok(())
    }
}
