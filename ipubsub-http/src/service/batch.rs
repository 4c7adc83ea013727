//! `POST /api/v1/streams/sendBatch`: many sends in one request.
//!
//! The body is `{"messages": [<send body>, …]}`, 1 to [`HttpConfig::max_batch_items`]
//! sends. Each send has exactly the semantics of `POST /api/v1/streams/send` (validation,
//! mode, TTL, persistence, auth per stream) and gets its own answer, in the order of the
//! request: `{"results": [{"status": 200[, "dbResumeToken": …]} or {"status": 4xx/5xx,
//! "error": {…}}, …]}`. Only a request that is not a batch at all is a 400 as a whole.
//!
//! How it runs: sends for streams this node owns run here. The persistent ones are queued on
//! the log together, in order, so they share group commits; the in-memory ones run one
//! stream after another per stream (a blocking send waits before the next of its stream),
//! streams side by side. The sends for each other owner go to it as one batch, owners side
//! by side; an owner that cannot be reached is suspected and its sends routed again, once,
//! as a single send's forward is. Sends of one stream therefore stay together and keep
//! their order wherever they run. An owner that does not know `sendBatch` (an older build,
//! during a rolling upgrade) gets its sends one by one, in order.

use std::time::Duration;

use crate::body::ApiBody;
use bytes::Bytes;
use futures_util::future::join_all;
use hyper::body::Body as HttpBody;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use ipubsub_cluster::{ForwardError, Node};
use ipubsub_core::{Append, Message, Redrive, ResumeToken, SendOptions, SendOutcome, StreamId};

use super::{App, Hop, SEND_PATH, SUSPICION, json};
use crate::auth::Permission;
use crate::config::HttpConfig;
use crate::error::{ApiError, ErrorCode, chain};
use crate::metrics::{ForwardOutcome, Limit, Route as MetricRoute};
use crate::send::{self, SendKind, SendRequest};

/// Where the endpoint is.
pub(super) const SEND_BATCH_PATH: &str = "/api/v1/streams/sendBatch";

/// The batch as it is on the wire: each send is kept as its JSON text, parsed on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

/// The sends of a batch body, each as its JSON text; an error when the body is not a batch
/// of 1 to `config.max_batch_items` sends.
pub(crate) fn parse<'a>(
    body: &'a [u8],
    config: &HttpConfig,
) -> Result<Vec<&'a RawValue>, ApiError> {
    let messages: Envelope<'a> = send::from_object(body)?;
    let n = messages.messages.len();
    if n == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "messages must hold at least one send",
        ));
    }
    if n > config.max_batch_items {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "messages holds {n} sends, the limit is {}",
                config.max_batch_items
            ),
        )
        .hit(Limit::BatchItems));
    }
    Ok(messages.messages)
}

/// How one send of a batch ended.
enum Outcome {
    /// An in-memory send taken.
    Sent,
    /// An in-memory send whose id its stream accepted within its dedupe window: no copy.
    Duplicate,
    /// A persistent send stored (or, `true`, found stored within its dedupe window): its
    /// resume token.
    Stored(String, bool),
    /// Refused or failed here.
    Failed(ApiError),
    /// The owner's answer to it within the owner's batch answer, as it gave it.
    Relayed(Bytes),
    /// The owner's answer to it as a single request (or to its whole batch): a status and
    /// a JSON object.
    Answered(StatusCode, Bytes),
}

impl Outcome {
    /// Appends the send's entry of `results` to `out`.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sent => out.extend_from_slice(b"{\"status\":200}"),
            Self::Duplicate => out.extend_from_slice(b"{\"status\":200,\"duplicate\":true}"),
            Self::Stored(token, duplicate) => {
                out.extend_from_slice(b"{\"status\":200,\"dbResumeToken\":\"");
                out.extend_from_slice(token.as_bytes());
                out.extend_from_slice(if *duplicate {
                    b"\",\"duplicate\":true}"
                } else {
                    b"\"}"
                });
            }
            Self::Failed(error) => with_status(out, error.code.status(), &error.body()),
            Self::Relayed(entry) => out.extend_from_slice(entry),
            Self::Answered(status, body) => with_status(out, *status, body),
        }
    }
}

/// `{"status": <status>, …the members of `object`…}`.
fn with_status(out: &mut Vec<u8>, status: StatusCode, object: &[u8]) {
    out.extend_from_slice(b"{\"status\":");
    out.extend_from_slice(status.as_str().as_bytes());
    let members = object
        .trim_ascii()
        .strip_prefix(b"{")
        .and_then(|o| o.strip_suffix(b"}"))
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    if !members.is_empty() {
        out.push(b',');
        out.extend_from_slice(members);
    }
    out.push(b'}');
}

/// The answer body: every send's entry, in order.
fn results(outcomes: &[Outcome]) -> Bytes {
    let mut out = Vec::with_capacity(16 + 48 * outcomes.len());
    out.extend_from_slice(b"{\"results\":[");
    for (i, outcome) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        outcome.write(&mut out);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// A send of the batch: its place in the request and what it asks.
type Item = (usize, SendRequest);

/// An in-memory send to run here: its place, message, mode, wait, and the redrive policy and
/// dedupe window it gives its stream.
type MemorySend = (usize, Message, SendOptions, Duration, (Redrive, Duration));

/// The sends bound for one other owner.
struct Group {
    owner: Node,
    items: Vec<Item>,
}

/// What forwarding a group came to: answers, or (its owner unreachable, suspected) its sends
/// to route again.
enum Forwarded {
    Answers(Vec<(usize, Outcome)>),
    Again(Vec<Item>),
}

impl App {
    /// `POST /api/v1/streams/sendBatch`.
    pub(super) async fn send_batch<B>(
        &self,
        request: Request<B>,
        id: &HeaderValue,
    ) -> Result<Response<ApiBody>, ApiError>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        // The body's bytes stay held until the answer.
        let (hop, grant, body, _held) = self.admitted_body(request, id).await?;
        let texts = parse(&body, &inner.config)?;
        let mut outcomes: Vec<Option<Outcome>> = texts.iter().map(|_| None).collect();
        let mut pending = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let checked = send::parse(text.get().as_bytes(), &inner.config, inner.log.is_some())
                .and_then(|send| match &grant {
                    Some(grant) => grant
                        .allow(Permission::Publish, send.stream.as_str())
                        .map(|()| send),
                    None => Ok(send),
                });
            match checked {
                Ok(send) => pending.push((i, send)),
                Err(e) => outcomes[i] = Some(Outcome::Failed(e)),
            }
        }
        for may_retry in [true, false] {
            if pending.is_empty() {
                break;
            }
            let (here, groups) = self.by_owner(std::mem::take(&mut pending), &hop);
            let forwards = join_all(
                groups
                    .into_iter()
                    .map(|group| self.forward_group(group, &texts, &hop, may_retry)),
            );
            let (local, forwarded) = tokio::join!(self.run_here(here, &hop), forwards);
            for (i, outcome) in local {
                outcomes[i] = Some(outcome);
            }
            for forwarded in forwarded {
                match forwarded {
                    Forwarded::Answers(answers) => {
                        for (i, outcome) in answers {
                            outcomes[i] = Some(outcome);
                        }
                    }
                    Forwarded::Again(items) => pending.extend(items),
                }
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Failed(ApiError::new(ErrorCode::Internal, "the send was not run"))
                })
            })
            .collect();
        for outcome in &outcomes {
            if let Outcome::Failed(e) = outcome {
                self.count_error(e, MetricRoute::SendBatch);
                if let Some(cause) = &e.log_cause {
                    tracing::warn!(request_id = %hop.id(), code = e.code.as_str(), %cause, "{}", e.message);
                }
            }
        }
        Ok(json(StatusCode::OK, results(&outcomes)))
    }

    /// Splits `items` into those this node serves and one group per other owner, each in the
    /// order of the request.
    fn by_owner(&self, items: Vec<Item>, hop: &Hop) -> (Vec<Item>, Vec<Group>) {
        let mut here = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        for item in items {
            match self.owner_elsewhere(&item.1.stream, hop) {
                None => here.push(item),
                Some(owner) => match groups.iter_mut().find(|g| g.owner.id() == owner.id()) {
                    Some(group) => group.items.push(item),
                    None => groups.push(Group {
                        owner,
                        items: vec![item],
                    }),
                },
            }
        }
        (here, groups)
    }

    /// Runs the sends this node serves: persistent ones queued on the log together, in-memory
    /// ones in order per stream, streams side by side.
    async fn run_here(&self, items: Vec<Item>, hop: &Hop) -> Vec<(usize, Outcome)> {
        let inner = &*self.inner;
        let mut done = Vec::new();
        let mut streams: Vec<(StreamId, Vec<MemorySend>)> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let mut logged = Vec::new();
        for (i, send) in items {
            let message = Message::new(send.id, send.payload, inner.engine.now());
            match send.kind {
                SendKind::Memory {
                    options,
                    wait,
                    redrive,
                    dedupe_window,
                } => {
                    let at = *index.entry(send.stream.clone()).or_insert_with(|| {
                        streams.push((send.stream.clone(), Vec::new()));
                        streams.len() - 1
                    });
                    let fixes = (redrive, dedupe_window);
                    streams[at]
                        .1
                        .push((i, message, options, hop.cap(wait), fixes));
                }
                SendKind::Log { ttl, dedupe_window } => logged.push((
                    i,
                    Append {
                        stream: send.stream,
                        message,
                        ttl,
                        dedupe_window,
                    },
                )),
            }
        }
        let memory = join_all(streams.into_iter().map(|(stream, sends)| async move {
            let mut answers = Vec::with_capacity(sends.len());
            for (i, message, options, wait, (redrive, window)) in sends {
                let fixed = inner
                    .engine
                    .set_redrive(&stream, redrive)
                    .and_then(|()| inner.engine.set_dedupe_window(&stream, window));
                let sent = match fixed {
                    Ok(()) => {
                        send::run_memory(&inner.engine, stream.clone(), message, options, wait)
                            .await
                    }
                    Err(e) => Err(e.into()),
                };
                let outcome = match sent {
                    Ok(SendOutcome::Duplicate) => Outcome::Duplicate,
                    Ok(_) => Outcome::Sent,
                    Err(e) => Outcome::Failed(e),
                };
                answers.push((i, outcome));
            }
            answers
        }));
        let (memory, logged) = tokio::join!(memory, self.append_here(logged));
        done.extend(memory.into_iter().flatten());
        done.extend(logged);
        done
    }

    /// Appends the persistent sends `logged` (place, append) together.
    async fn append_here(&self, logged: Vec<(usize, Append)>) -> Vec<(usize, Outcome)> {
        let inner = &*self.inner;
        if logged.is_empty() {
            return Vec::new();
        }
        let Some(log) = &inner.log else {
            let refused = inner.config.no_persistence("writeToDB");
            return logged
                .into_iter()
                .map(|(i, ..)| (i, Outcome::Failed(refused.clone())))
                .collect();
        };
        let places: Vec<(usize, StreamId)> = logged
            .iter()
            .map(|(i, append)| (*i, append.stream.clone()))
            .collect();
        let appends = logged.into_iter().map(|(_, append)| append);
        match tokio::time::timeout(inner.config.store_timeout, log.append_all(appends)).await {
            Ok(answers) => places
                .into_iter()
                .zip(answers)
                .map(|((i, stream), answer)| {
                    let outcome = match answer {
                        Ok(written) => Outcome::Stored(
                            ResumeToken::new(&stream, written.seq).to_string(),
                            written.duplicate,
                        ),
                        Err(e) => Outcome::Failed(e.into()),
                    };
                    (i, outcome)
                })
                .collect(),
            Err(_elapsed) => {
                let late = ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the message store did not confirm the write in time; it may or may not be stored",
                );
                places
                    .into_iter()
                    .map(|(i, _)| (i, Outcome::Failed(late.clone())))
                    .collect()
            }
        }
    }

    /// Forwards `group` to its owner as one batch. An owner that cannot be reached is
    /// suspected and, when `may_retry`, the sends come back to be routed again; otherwise
    /// each is answered `OWNER_UNAVAILABLE`.
    async fn forward_group(
        &self,
        group: Group,
        texts: &[&RawValue],
        hop: &Hop,
        may_retry: bool,
    ) -> Forwarded {
        let inner = &*self.inner;
        let Group { owner, items } = group;
        let mut body = Vec::with_capacity(
            16 + items
                .iter()
                .map(|(i, _)| texts[*i].get().len() + 1)
                .sum::<usize>(),
        );
        body.extend_from_slice(b"{\"messages\":[");
        for (k, (i, _)) in items.iter().enumerate() {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(texts[*i].get().as_bytes());
        }
        body.extend_from_slice(b"]}");
        let wait = items
            .iter()
            .map(|(_, send)| self.wait_of(send, hop))
            .max()
            .unwrap_or_default();
        let id = hop.id();
        let metrics = &inner.metrics;
        let forwarded = Box::pin(inner.forwarder.forward(
            &owner,
            Method::POST,
            SEND_BATCH_PATH,
            Bytes::from(body),
            wait,
            id,
        ));
        match forwarded.await {
            Ok(answer) => {
                metrics.forward(ForwardOutcome::Answered);
                let (parts, body) = answer.into_parts();
                if parts.status == StatusCode::OK {
                    return Forwarded::Answers(relayed(&items, &body));
                }
                if matches!(
                    parts.status,
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) {
                    return Forwarded::Answers(
                        self.forward_one_by_one(&owner, items, texts, hop).await,
                    );
                }
                let answer = Outcome::Answered(parts.status, body);
                let mut answers = Vec::with_capacity(items.len());
                for (i, _) in &items {
                    answers.push((*i, answer.clone_answer()));
                }
                Forwarded::Answers(answers)
            }
            Err(e @ (ForwardError::Unreachable { .. } | ForwardError::Tls { .. })) if may_retry => {
                metrics.forward(if matches!(e, ForwardError::Tls { .. }) {
                    ForwardOutcome::TlsFailed
                } else {
                    ForwardOutcome::Unreachable
                });
                tracing::warn!(request_id = %id, owner = %owner.id(), error = chain(&e), "owner unreachable: suspecting it and routing its sends again");
                inner.cluster.suspect(owner.id(), SUSPICION);
                Forwarded::Again(items)
            }
            Err(e) => {
                let failed = if let ForwardError::Busy { .. } = e {
                    metrics.forward(ForwardOutcome::Busy);
                    ApiError::new(ErrorCode::TooManyWaiters, e.to_string()).hit(Limit::Forwarded)
                } else {
                    metrics.forward(ForwardOutcome::Failed);
                    tracing::warn!(request_id = %id, owner = %owner.id(), error = chain(&e), "forwarding a batch failed");
                    ApiError::new(
                        ErrorCode::OwnerUnavailable,
                        format!("the node that owns this stream did not answer: {e}"),
                    )
                };
                Forwarded::Answers(
                    items
                        .into_iter()
                        .map(|(i, _)| (i, Outcome::Failed(failed.clone())))
                        .collect(),
                )
            }
        }
    }

    /// The sends of a group as single sends to an owner that takes no batches, in order.
    async fn forward_one_by_one(
        &self,
        owner: &Node,
        items: Vec<Item>,
        texts: &[&RawValue],
        hop: &Hop,
    ) -> Vec<(usize, Outcome)> {
        let inner = &*self.inner;
        let mut answers = Vec::with_capacity(items.len());
        for (i, send) in items {
            let body = Bytes::copy_from_slice(texts[i].get().as_bytes());
            let wait = self.wait_of(&send, hop);
            let forwarded = Box::pin(inner.forwarder.forward(
                owner,
                Method::POST,
                SEND_PATH,
                body,
                wait,
                hop.id(),
            ));
            let outcome = match forwarded.await {
                Ok(answer) => {
                    inner.metrics.forward(ForwardOutcome::Answered);
                    let (parts, body) = answer.into_parts();
                    Outcome::Answered(parts.status, body)
                }
                Err(e) => {
                    inner.metrics.forward(ForwardOutcome::Failed);
                    Outcome::Failed(ApiError::new(
                        ErrorCode::OwnerUnavailable,
                        format!("the node that owns this stream did not answer: {e}"),
                    ))
                }
            };
            answers.push((i, outcome));
        }
        answers
    }

    /// How long the owner may take to answer `send`.
    fn wait_of(&self, send: &SendRequest, hop: &Hop) -> Duration {
        match &send.kind {
            SendKind::Memory { wait, .. } => hop.cap(*wait),
            SendKind::Log { .. } => self.inner.config.store_timeout,
        }
    }
}

impl Outcome {
    /// The same answer again, for every send of a batch the owner answered as a whole.
    fn clone_answer(&self) -> Self {
        match self {
            Self::Answered(status, body) => Self::Answered(*status, body.clone()),
            Self::Relayed(entry) => Self::Relayed(entry.clone()),
            Self::Sent => Self::Sent,
            Self::Duplicate => Self::Duplicate,
            Self::Stored(token, duplicate) => Self::Stored(token.clone(), *duplicate),
            Self::Failed(e) => Self::Failed(e.clone()),
        }
    }
}

/// The entries of an owner's batch answer `body` for `items`, in order; each send is
/// answered `INTERNAL` if the answer does not hold one entry per send.
fn relayed(items: &[Item], body: &[u8]) -> Vec<(usize, Outcome)> {
    #[derive(Deserialize)]
    struct Results<'a> {
        #[serde(borrow)]
        results: Vec<&'a RawValue>,
    }
    match serde_json::from_slice::<Results<'_>>(body) {
        Ok(answer) if answer.results.len() == items.len() => items
            .iter()
            .zip(answer.results)
            .map(|((i, _), entry)| {
                (
                    *i,
                    Outcome::Relayed(Bytes::copy_from_slice(entry.get().as_bytes())),
                )
            })
            .collect(),
        _ => {
            let garbled = ApiError::new(
                ErrorCode::Internal,
                "the stream's owner answered the batch with something else than one result per send",
            );
            items
                .iter()
                .map(|(i, _)| (*i, Outcome::Failed(garbled.clone())))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<usize, ApiError> {
        parse(body.as_bytes(), &HttpConfig::default()).map(|m| m.len())
    }

    #[test]
    fn a_batch_holds_one_to_the_limit_of_sends() {
        assert_eq!(parse_str(r#"{"messages":[{},{"a":1}]}"#).ok(), Some(2));
        let refused = |body: &str, code: ErrorCode, needle: &str| {
            crate::error::assert_refused(parse_str(body), body, code, needle);
        };
        refused("[]", ErrorCode::InvalidJson, "object");
        refused("{}", ErrorCode::MissingField, "messages");
        refused(
            r#"{"messages":[]}"#,
            ErrorCode::InvalidField,
            "at least one",
        );
        refused(r#"{"messages":{}}"#, ErrorCode::InvalidField, "messages");
        refused(r#"{"messages":[],"x":1}"#, ErrorCode::UnknownField, "x");
        refused(
            r#"{"messages":[1"#,
            ErrorCode::InvalidJson,
            "not valid JSON",
        );
        let many = format!(
            "{{\"messages\":[{}]}}",
            vec!["{}"; HttpConfig::default().max_batch_items + 1].join(",")
        );
        refused(&many, ErrorCode::InvalidField, "limit is 1000");
    }

    #[test]
    fn each_send_gets_its_entry_in_order() {
        let body = results(&[
            Outcome::Sent,
            Outcome::Stored("T1".into(), false),
            Outcome::Failed(ApiError::new(ErrorCode::InvalidField, "bad \"x\"")),
            Outcome::Relayed(Bytes::from_static(b"{\"status\":200}")),
            Outcome::Answered(StatusCode::OK, Bytes::from_static(b"{}")),
            Outcome::Answered(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b" {\"error\":{\"code\":\"SHUTTING_DOWN\",\"message\":\"m\"}} "),
            ),
        ]);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"results": [
                {"status": 200},
                {"status": 200, "dbResumeToken": "T1"},
                {"status": 400, "error": {"code": "INVALID_FIELD", "message": "bad \"x\""}},
                {"status": 200},
                {"status": 200},
                {"status": 503, "error": {"code": "SHUTTING_DOWN", "message": "m"}},
            ]})
        );
    }
}
