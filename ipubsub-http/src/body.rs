//! [`ApiBody`]: what every answer of the API carries — a whole body, a stream of events, or
//! the stream of events another node sends, passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use ipubsub_cluster::Relayed;

use crate::sse::EventStream;

/// The body of an answer of [`App::handle`](crate::App::handle): almost always a whole JSON
/// body; for a receive asked as Server-Sent Events, an event stream that ends when the
/// receive does (its stream moved, its timeout passed, the node shut down or the client
/// went away).
#[derive(Debug)]
pub struct ApiBody(Kind);

#[derive(Debug)]
enum Kind {
    Whole(Full<Bytes>),
    /// Served here.
    Events(Box<EventStream>),
    /// Served by the stream's owner and passed through as it arrives.
    /// Boxed: it holds its request's place in flight to the member, and most answers are
    /// not relayed streams.
    Relayed(Box<Relayed>),
}

/// Why a body ended early: the owner whose events were passed through broke the exchange.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl ApiBody {
    pub(crate) fn events(events: EventStream) -> Self {
        Self(Kind::Events(Box::new(events)))
    }

    pub(crate) fn relayed(body: Relayed) -> Self {
        Self(Kind::Relayed(Box::new(body)))
    }
}

impl From<Full<Bytes>> for ApiBody {
    fn from(body: Full<Bytes>) -> Self {
        Self(Kind::Whole(body))
    }
}

impl From<Bytes> for ApiBody {
    fn from(body: Bytes) -> Self {
        Self(Kind::Whole(Full::new(body)))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            Kind::Events(events) => events.poll_frame(cx).map(|f| f.map(Ok)),
            Kind::Relayed(body) => Pin::new(&mut **body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(body) => body.is_end_stream(),
            Kind::Events(events) => events.is_done(),
            Kind::Relayed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(body) => body.size_hint(),
            Kind::Events(_) => SizeHint::default(),
            Kind::Relayed(body) => body.size_hint(),
        }
    }
}
