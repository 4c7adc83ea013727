//! How a hand-off travels: what a drained stream holds ([`Item`]), and how each item reaches
//! the stream's new owner ([`HandOff`], over the [`Forwarder`] in production). A buffered
//! message or a delivery in flight goes as the v1 send of its message, marked as a hand-off
//! (with its lease in the mark); the ids a stream's dedupe window remembers go on an internal
//! path that only members may call. When and where streams move is the
//! [`Rebalancer`](crate::Rebalancer)'s business.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ipubsub_cluster::{Forwarder, Node};
use ipubsub_core::{InFlight, Message, MessageId, Redrive, StreamId};

use crate::adoptions::HandOffCopy;

/// Where a hand-off goes: the new owner of a stream. The [`Forwarder`] in production; tests
/// use their own.
#[async_trait]
pub trait HandOff: Send + Sync + 'static {
    /// Hands `moving`, accepted on this node, to `owner`. `Ok` once the owner holds it; an
    /// error if it may not.
    async fn hand_off(
        &self,
        owner: &Node,
        moving: &Moving<'_>,
        request_id: &str,
    ) -> Result<(), String>;
}

/// One thing a hand-off moves to a stream's owner.
#[derive(Debug)]
#[non_exhaustive]
pub struct Moving<'a> {
    /// The stream.
    pub stream: &'a StreamId,
    /// Its size, if a send fixed it.
    pub size: Option<u32>,
    /// Its redrive policy.
    pub redrive: &'a Redrive,
    /// A buffered message, or a delivery in flight with its lease.
    pub item: &'a Item,
    /// How long ago the stream was drained: what a lease in flight lost meanwhile.
    pub since_drained: Duration,
}

/// What a drained stream holds: a buffered message, a delivery in flight, or ids its dedupe
/// window remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A buffered message.
    Message(Message),
    /// A delivery in flight, with its lease.
    InFlight(InFlight),
    /// The stream's dedupe window and ids it remembers, each with the time it had left.
    Remembered(Duration, Vec<(MessageId, Duration)>),
}

/// Most ids one hand-off of remembered ids carries.
pub(crate) const REMEMBERED_PER_REQUEST: usize = 1000;

/// The internal path a node hands remembered ids over on (forwarded requests only).
pub(crate) const REMEMBERED_PATH: &str = "/api/v1/streams/handoff/remembered";

impl Item {
    /// The message, if the item is one.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Item::Message(message) => Some(message),
            Item::InFlight(in_flight) => Some(&in_flight.message),
            Item::Remembered(..) => None,
        }
    }

    /// The delivery in flight with what is left of its lease `elapsed` after it was drained.
    pub(crate) fn in_flight_after(&self, elapsed: Duration) -> Option<InFlight> {
        let Item::InFlight(in_flight) = self else {
            return None;
        };
        let mut later = in_flight.clone();
        later.remaining = in_flight.remaining.saturating_sub(elapsed);
        Some(later)
    }
}

#[async_trait]
impl HandOff for Forwarder {
    async fn hand_off(
        &self,
        owner: &Node,
        moving: &Moving<'_>,
        request_id: &str,
    ) -> Result<(), String> {
        let Some(message) = moving.item.message() else {
            return self.hand_off_remembered(owner, moving, request_id).await;
        };
        let body = handoff_body(moving.stream, moving.size, moving.redrive, message);
        let mut copy = HandOffCopy::header_value(message.timestamp());
        if let Some(in_flight) = moving.item.in_flight_after(moving.since_drained) {
            copy.push_str(&HandOffCopy::lease_suffix(&in_flight));
        }
        match Forwarder::hand_off(
            self,
            owner,
            "/api/v1/streams/send",
            body,
            Duration::from_secs(5),
            request_id,
            &copy,
        )
        .await
        {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(format!("answered {}", answer.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The hand-off of remembered ids, as its own forwarded request.
#[async_trait]
trait HandOffRemembered {
    async fn hand_off_remembered(
        &self,
        owner: &Node,
        moving: &Moving<'_>,
        request_id: &str,
    ) -> Result<(), String>;
}

#[async_trait]
impl HandOffRemembered for Forwarder {
    async fn hand_off_remembered(
        &self,
        owner: &Node,
        moving: &Moving<'_>,
        request_id: &str,
    ) -> Result<(), String> {
        let Item::Remembered(window, ids) = moving.item else {
            return Ok(());
        };
        let body = remembered_body(moving.stream, *window, ids, moving.since_drained);
        match self
            .forward(
                owner,
                hyper::Method::POST,
                REMEMBERED_PATH,
                body,
                Duration::from_secs(5),
                request_id,
            )
            .await
        {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(format!("answered {}", answer.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `{"streamId", "windowMs", "ids": [[id, leftMs], …]}`, each id's time left shortened by
/// `elapsed`; ids that ran out meanwhile are left out.
pub(crate) fn remembered_body(
    stream: &StreamId,
    window: Duration,
    ids: &[(MessageId, Duration)],
    elapsed: Duration,
) -> Bytes {
    let ids: Vec<_> = ids
        .iter()
        .filter_map(|(id, left)| {
            let left = left.checked_sub(elapsed).filter(|l| !l.is_zero())?;
            Some(serde_json::json!([id.as_str(), left.as_millis() as u64]))
        })
        .collect();
    let body = serde_json::json!({
        "streamId": stream.as_str(),
        "windowMs": window.as_millis() as u64,
        "ids": ids,
    });
    Bytes::from(body.to_string())
}

/// A hand-off of remembered ids, as read ([`parse_remembered`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub(crate) stream: StreamId,
    pub(crate) window: Duration,
    pub(crate) ids: Vec<(MessageId, Duration)>,
}

/// Reads the body [`remembered_body`] writes.
pub(crate) fn parse_remembered(body: &[u8]) -> Result<Remembered, crate::ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Body {
        stream_id: String,
        window_ms: u64,
        ids: Vec<(String, u64)>,
    }
    let body: Body = crate::send::from_object(body)?;
    let invalid = |e: ipubsub_core::IdError| {
        crate::ApiError::new(crate::ErrorCode::InvalidField, e.to_string())
    };
    let ids = body
        .ids
        .into_iter()
        .map(|(id, left)| Ok((MessageId::new(id)?, Duration::from_millis(left))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    Ok(Remembered {
        stream: StreamId::new(body.stream_id).map_err(invalid)?,
        window: Duration::from_millis(body.window_ms),
        ids,
    })
}

/// A send body that re-creates `message` (its id and bytes as sent) on `stream`, with the
/// stream's size and redrive policy.
fn handoff_body(
    stream: &StreamId,
    size: Option<u32>,
    redrive: &Redrive,
    message: &Message,
) -> Bytes {
    let mut out = Vec::with_capacity(96 + message.payload().len());
    out.extend_from_slice(b"{\"streamId\":");
    out.extend_from_slice(quoted(stream.as_str()).as_bytes());
    out.extend_from_slice(b",\"messageUuid\":");
    out.extend_from_slice(quoted(message.id().as_str()).as_bytes());
    if let Some(size) = size {
        out.extend_from_slice(format!(",\"inMemoryStreamSize\":{size}").as_bytes());
    }
    if redrive.max_deliveries > 0 {
        out.extend_from_slice(format!(",\"maxDeliveries\":{}", redrive.max_deliveries).as_bytes());
        if let Some(dead_letter) = &redrive.dead_letter {
            out.extend_from_slice(b",\"deadLetterStreamId\":");
            out.extend_from_slice(quoted(dead_letter.as_str()).as_bytes());
        }
    }
    out.extend_from_slice(b",\"message\":");
    out.extend_from_slice(message.payload());
    out.push(b'}');
    Bytes::from(out)
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use ipubsub_core::Timestamp;

    use super::*;

    #[test]
    fn a_handoff_body_is_a_v1_send_of_the_same_message_and_size() {
        let message = Message::new(
            MessageId::new("id \"1\"").expect("id"),
            Bytes::from_static(b"{\"n\":1}"),
            Timestamp::from_micros(1),
        );
        let body = handoff_body(
            &StreamId::new("s").expect("id"),
            Some(0),
            &Redrive::default(),
            &message,
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            parsed,
            serde_json::json!({"streamId": "s", "messageUuid": "id \"1\"", "inMemoryStreamSize": 0, "message": {"n": 1}})
        );
    }

    #[test]
    fn remembered_ids_read_back_as_written_less_the_time_spent()
    -> Result<(), Box<dyn std::error::Error>> {
        let stream = StreamId::new("s \"1\"")?;
        let ids = vec![
            (MessageId::new("a")?, Duration::from_millis(1500)),
            (MessageId::new("b")?, Duration::from_millis(200)),
        ];
        let window = Duration::from_secs(60);
        let body = remembered_body(&stream, window, &ids, Duration::from_millis(500));
        let read = parse_remembered(&body)?;
        assert_eq!((read.stream, read.window), (stream, window));
        assert_eq!(
            read.ids,
            [(MessageId::new("a")?, Duration::from_millis(1000))]
        );
        assert!(parse_remembered(br#"{"streamId":"","windowMs":1,"ids":[]}"#).is_err());
        assert!(parse_remembered(br#"{"streamId":"s","windowMs":1,"ids":[["",1]]}"#).is_err());
        Ok(())
    }
}
