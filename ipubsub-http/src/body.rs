//! [`ApiBody`]: what every answer of the API carries — a whole body, a stream of events, or
//! the stream of events another node sends, passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use ipubsub_cluster::Relayed;

use crate::body_budget::{BodyBudget, HeldBody};
use crate::sse::EventStream;

/// Answers larger than this are counted in the body budget until sent
/// ([`ApiBody::held_in`]).
const HELD_ABOVE: usize = 64 << 10;

/// The body of an answer of [`App::handle`](crate::App::handle): almost always a whole JSON
/// body; for a receive asked as Server-Sent Events, an event stream that ends when the
/// receive does (its stream moved, its timeout passed, the node shut down or the client
/// went away).
#[derive(Debug)]
pub struct ApiBody(Kind);

#[derive(Debug)]
enum Kind {
    /// A whole answer, taken at the first poll.
    Whole(Option<Bytes>),
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

    /// A whole answer larger than [`HELD_ABOVE`], counted in `budget` (whatever room is
    /// left: it was made already) until its bytes are freed, that is until the connection
    /// wrote them (hyper and h2 queue the bytes they are given without copying them; a
    /// client that stops reading keeps them queued); any other answer as it is. Answers
    /// nobody reads then fill the budget, and the request bodies that come next are refused,
    /// instead of memory growing with every such answer.
    pub(crate) fn held_in(self, budget: &std::sync::Arc<BodyBudget>) -> Self {
        match self.0 {
            Kind::Whole(Some(bytes)) if bytes.len() > HELD_ABOVE => {
                let held = budget.hold_anyway(bytes.len());
                Self(Kind::Whole(Some(Bytes::from_owner(HeldBytes {
                    bytes,
                    _held: held,
                }))))
            }
            other => Self(other),
        }
    }
}

/// Bytes that keep their hold on the body budget for as long as any part of them lives.
struct HeldBytes {
    bytes: Bytes,
    _held: HeldBody,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Bytes> for ApiBody {
    fn from(body: Bytes) -> Self {
        Self(Kind::Whole(Some(body)))
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
            // An empty body ends without a frame, as `Full`'s does.
            Kind::Whole(body) => Poll::Ready(
                body.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Events(events) => events.poll_frame(cx).map(|f| f.map(Ok)),
            Kind::Relayed(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(body) => body.as_ref().is_none_or(Bytes::is_empty),
            Kind::Events(events) => events.is_done(),
            Kind::Relayed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Events(_) => SizeHint::default(),
            Kind::Relayed(body) => body.size_hint(),
        }
    }
}
