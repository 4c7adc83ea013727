//! How many forwarded requests a node has in flight to each member, capped.
//!
//! Without a cap, a node's requests to one member are bounded by nothing it controls: over
//! HTTP/2 the client queues those past the member's stream limit in memory, over HTTP/1.1 each
//! opens a connection. A forward past the cap is refused at once (not delivered, so the
//! caller may answer or retry), and its place is given back when its answer has been read
//! (for an event stream, when the stream ends).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::forward::Answer;
use crate::node::NodeId;

/// The forwarded requests in flight per member, and the cap. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    /// Members with at least one request in flight (an entry leaves at zero).
    per_member: Mutex<HashMap<NodeId, usize>>,
}

impl InFlight {
    /// At most `max` requests in flight to each member.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max,
                per_member: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.shared.max
    }

    /// A place among `member`'s requests in flight, or `None` at the cap.
    pub(crate) fn enter(&self, member: &NodeId) -> Option<Permit> {
        let mut per_member = self
            .shared
            .per_member
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = per_member.entry(member.clone()).or_insert(0);
        if *count >= self.shared.max {
            return None;
        }
        *count += 1;
        Some(Permit {
            shared: Arc::clone(&self.shared),
            member: member.clone(),
        })
    }

    /// Requests in flight to `member` now.
    #[cfg(test)]
    pub(crate) fn count(&self, member: &NodeId) -> usize {
        let per_member = self
            .shared
            .per_member
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        per_member.get(member).copied().unwrap_or(0)
    }
}

/// One request's place in flight to a member, given back on drop.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    member: NodeId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_member = self
            .shared
            .per_member
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_member.get_mut(&self.member) {
            *count -= 1;
            if *count == 0 {
                per_member.remove(&self.member);
            }
        }
    }
}

/// The body of a member's answer that streams on (an event stream): it holds its request's
/// place in flight until it ends or is dropped.
#[derive(Debug)]
pub struct Relayed {
    body: Answer,
    _permit: Permit,
}

impl Relayed {
    pub(crate) fn new(body: Answer, permit: Permit) -> Self {
        Self {
            body,
            _permit: permit,
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_has_its_own_cap_and_places_come_back() -> Result<(), crate::NodeIdError> {
        let (a, b) = (NodeId::new("a")?, NodeId::new("b")?);
        let in_flight = InFlight::new(2);
        let first = in_flight.enter(&a).map(Some);
        let second = in_flight.enter(&a);
        assert!(first.is_some() && second.is_some());
        assert!(in_flight.enter(&a).is_none(), "a third to a");
        let to_b = in_flight.enter(&b);
        assert!(to_b.is_some(), "b is not a");
        drop(second);
        assert_eq!(in_flight.count(&a), 1);
        let again = in_flight.enter(&a);
        assert!(again.is_some(), "a place came back");
        drop((first, again, to_b));
        assert_eq!((in_flight.count(&a), in_flight.count(&b)), (0, 0));
        assert!(
            in_flight
                .shared
                .per_member
                .lock()
                .is_ok_and(|m| m.is_empty()),
            "members without requests leave the map"
        );
        Ok(())
    }
}
