//! `POST /api/v1/streams/ack`, `nack` and `extend`, served by the stream's owner, and what
//! becomes of messages delivered a stream's `maxDeliveries` times.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Body;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use ipubsub_cluster::Route;
use ipubsub_core::{DeadLetter, Expired, LeaseError, Message};

use super::{App, json};
use crate::acks::{self, Verb};
use crate::auth::Permission;
use crate::body::ApiBody;
use crate::error::ApiError;

/// How long an `ack`, `nack` or `extend` forwarded to the owner may take: it waits for
/// nothing there.
const FORWARD_WAIT: Duration = Duration::from_secs(5);

/// How often the server ends the leases that are due ([`App::run_lease_expiry`]): a message
/// goes back to its stream at most this long after its lease's deadline.
pub const LEASE_TICK: Duration = Duration::from_millis(100);

impl App {
    /// `POST` of an `ack`, `nack` or `extend`: checked here, then served by the stream's
    /// owner, which holds the leases.
    pub(super) async fn lease_verb<B>(
        &self,
        request: Request<B>,
        id: &HeaderValue,
        verb: Verb,
    ) -> Result<Response<ApiBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let (hop, grant, body, _held) = self.admitted_body(request, id).await?;
        let asked = acks::parse(&body, verb, &inner.config)?;
        if let Some(grant) = grant {
            // Whoever may receive from a stream may settle what they received.
            grant.allow(Permission::Subscribe, asked.stream.as_str())?;
        }
        let forwarded = self.forward(
            &asked.stream,
            &hop,
            Method::POST,
            verb.path(),
            &body,
            FORWARD_WAIT,
        );
        if let Some(answer) = forwarded.await? {
            return Ok(answer);
        }
        let (engine, stream, handles) = (&inner.engine, &asked.stream, asked.parsed());
        let outcomes: Vec<Result<(), LeaseError>> = match verb {
            Verb::Ack => engine.ack(stream, &handles),
            Verb::Extend => engine.extend(stream, &handles, asked.duration),
            Verb::Nack => {
                let outcomes = engine.nack(stream, &handles, asked.duration);
                let mut letters = Vec::new();
                let outcomes = outcomes
                    .into_iter()
                    .map(|outcome| outcome.map(|letter| letters.extend(letter)))
                    .collect();
                self.dead_letters(letters);
                outcomes
            }
        };
        Ok(json(StatusCode::OK, acks::answer(&asked, outcomes)))
    }

    /// `POST` of remembered ids another node hands over with a stream it drained
    /// ([`REMEMBERED_PATH`](crate::handoff::REMEMBERED_PATH)): only from a member (a
    /// forwarded request, with the cluster secret if there is one); to anyone else there is
    /// no such endpoint.
    pub(super) async fn adopt_remembered<B>(
        &self,
        request: Request<B>,
        id: &HeaderValue,
    ) -> Result<Response<ApiBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if !request
            .headers()
            .contains_key(ipubsub_cluster::FORWARDED_HEADER)
        {
            return Err(ApiError::new(
                crate::error::ErrorCode::NotFound,
                format!("no endpoint at {}", request.uri().path()),
            ));
        }
        let (_, _, body, _held) = self.admitted_body(request, id).await?;
        let remembered = crate::handoff::parse_remembered(&body)?;
        let (stream, window, ids) = (remembered.stream, remembered.window, remembered.ids);
        self.inner.engine.adopt_dedupe(&stream, window, ids)?;
        Ok(json(StatusCode::OK, Bytes::from_static(b"{}")))
    }

    /// Every `tick`, until `stop` turns true: [`expire_leases`](Self::expire_leases).
    pub async fn run_lease_expiry(
        &self,
        tick: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            let expired = self.expire_leases();
            if expired.redelivered + expired.dropped > 0 {
                tracing::debug!(
                    redelivered = expired.redelivered,
                    dropped = expired.dropped,
                    "leases ended"
                );
            }
        }
    }

    /// Ends the leases whose deadline passed ([`Engine::expire_leases`]) and puts the
    /// messages that had their stream's `maxDeliveries` on their dead-letter streams. The
    /// server calls it every [`LEASE_TICK`].
    ///
    /// [`Engine::expire_leases`]: ipubsub_core::Engine::expire_leases
    pub fn expire_leases(&self) -> Expired {
        let mut expired = self.inner.engine.expire_leases();
        self.dead_letters(std::mem::take(&mut expired.dead_letters));
        expired
    }

    /// Puts each dead letter on its dead-letter stream, here: a stream owned elsewhere is
    /// moved on to its owner as any stray is (within a second or so). The message keeps its
    /// id; its body says where it comes from:
    /// `{"streamId": <its stream>, "deliveryCount": <n>, "message": <the message as sent>}`.
    fn dead_letters(&self, letters: Vec<DeadLetter>) {
        let inner = &*self.inner;
        for letter in letters {
            let (dead_letter, message) = (letter.dead_letter.clone(), wrapped(&letter));
            // Already counted in the memory budget while it was in flight: never refused.
            if let Err(e) = inner.engine.restore(&dead_letter, None, message) {
                tracing::error!(stream = %letter.stream, %dead_letter, error = %e, "a dead letter was lost");
                continue;
            }
            if matches!(inner.cluster.route(&dead_letter), Route::Forward(_)) {
                inner.strays.note(&dead_letter);
            }
        }
    }
}

/// The message a dead letter becomes on its dead-letter stream.
fn wrapped(letter: &DeadLetter) -> Message {
    let message = &letter.message;
    let mut out = Vec::with_capacity(64 + letter.stream.as_str().len() + message.payload().len());
    out.extend_from_slice(b"{\"streamId\":");
    if serde_json::to_writer(&mut out, letter.stream.as_str()).is_err() {
        out.extend_from_slice(b"\"\"");
    }
    out.extend_from_slice(
        format!(",\"deliveryCount\":{},\"message\":", letter.deliveries).as_bytes(),
    );
    out.extend_from_slice(message.payload());
    out.push(b'}');
    Message::new(message.id().clone(), Bytes::from(out), message.timestamp())
}

#[cfg(test)]
mod tests {
    use ipubsub_core::{MessageId, Redrive, StreamId, Timestamp};

    use super::*;

    #[test]
    fn a_dead_letter_says_where_it_comes_from_and_keeps_the_message_as_sent()
    -> Result<(), Box<dyn std::error::Error>> {
        let engine = ipubsub_core::Engine::default();
        let stream = StreamId::new("orders \"eu\"")?;
        engine.set_redrive(&stream, Redrive::new(1, Some(StreamId::new("dlq")?)))?;
        let message = Message::new(
            MessageId::new("m-1")?,
            Bytes::from_static(b"{\"n\": 1.50}"),
            Timestamp::from_micros(5),
        );
        futures_util::FutureExt::now_or_never(engine.send(
            stream.clone(),
            message,
            Default::default(),
        ))
        .ok_or("send")??;
        let leased = engine.try_receive_leased(&stream, Duration::from_secs(1), 1);
        let letter = engine
            .nack(&stream, &[leased[0].handle], Duration::ZERO)
            .remove(0)?
            .ok_or("a dead letter")?;
        let wrapped = wrapped(&letter);
        assert_eq!(wrapped.id().as_str(), "m-1");
        assert_eq!(
            &wrapped.payload()[..],
            br#"{"streamId":"orders \"eu\"","deliveryCount":1,"message":{"n": 1.50}}"#
        );
        Ok(())
    }
}
