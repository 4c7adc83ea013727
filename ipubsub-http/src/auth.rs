//! [`Auth`]: bearer tokens, what each may do, and how fast.
//!
//! With auth configured, a send or a receive carries `Authorization: Bearer <token>`. A
//! token grants publishing (sends), subscribing (receives) or both, optionally only on
//! streams whose id starts with a prefix, optionally at a bounded request rate. A missing
//! or unknown token is a 401, a known token asking for what it was not granted a 403, a
//! token over its rate a 429.
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared with every one
//! of them in constant time, so the time a check takes tells nothing about how close a guess
//! was. Tokens never appear in logs or `Debug` output; a token's `name` does.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Limit;

/// Shortest token accepted, in bytes: a token is a password that can be guessed online.
pub const MIN_TOKEN_LEN: usize = 16;

/// One bearer token and what it grants. `Debug` shows everything but the token.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenGrant {
    /// Names the token in logs, errors and metrics (the token itself never appears there).
    pub name: String,
    /// The token: [`MIN_TOKEN_LEN`] to 1024 visible ASCII characters.
    pub token: String,
    /// May send.
    pub publish: bool,
    /// May receive.
    pub subscribe: bool,
    /// Only streams whose id starts with this; empty: every stream.
    pub stream_prefix: String,
    /// Requests per second this token may make on one node, on average; 0: no limit.
    pub requests_per_second: u32,
    /// Requests it may make at once above that rate; 0: one second's worth.
    pub burst: u32,
}

impl TokenGrant {
    /// A token named `name` that may publish and subscribe on every stream, without a rate
    /// limit; change the fields to narrow it.
    pub fn new(name: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            token: token.into(),
            publish: true,
            subscribe: true,
            stream_prefix: String::new(),
            requests_per_second: 0,
            burst: 0,
        }
    }
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("stream_prefix", &self.stream_prefix)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

/// Why a set of grants was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Auth was asked for with no token at all: every request would be refused.
    #[error("auth needs at least one token")]
    NoTokens,
    /// A token is too short, too long or not visible ASCII.
    #[error(
        "the token named {0:?} must be {MIN_TOKEN_LEN} to 1024 visible ASCII characters (no spaces)"
    )]
    BadToken(String),
    /// Two grants share a name, or a token.
    #[error("two tokens share the name or the token of {0:?}")]
    Duplicate(String),
    /// A name is empty or has characters that do not belong in logs and metric labels.
    #[error("token name {0:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")]
    BadName(String),
    /// A grant allows nothing.
    #[error("the token named {0:?} may neither publish nor subscribe")]
    GrantsNothing(String),
}

/// What a request asks a token for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    Publish,
    Subscribe,
}

/// The configured tokens. Cheap to clone; clones share the rate limits.
#[derive(Clone)]
pub struct Auth {
    grants: Arc<[Arc<Grant>]>,
}

/// One token as it is kept: its digest, never the token.
#[derive(PartialEq, Eq)]
pub(crate) struct Grant {
    digest: [u8; 32],
    name: String,
    publish: bool,
    subscribe: bool,
    prefix: String,
    limit: Option<RateLimit>,
}

impl Auth {
    /// Checks `grants` and keeps their digests.
    pub fn new(grants: impl IntoIterator<Item = TokenGrant>) -> Result<Self, AuthError> {
        let mut kept: Vec<Arc<Grant>> = Vec::new();
        for grant in grants {
            let name_ok = (1..=64).contains(&grant.name.len())
                && grant
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
            if !name_ok {
                return Err(AuthError::BadName(grant.name));
            }
            let token = grant.token.as_bytes();
            if !(MIN_TOKEN_LEN..=1024).contains(&token.len())
                || !token.iter().all(u8::is_ascii_graphic)
            {
                return Err(AuthError::BadToken(grant.name));
            }
            if !grant.publish && !grant.subscribe {
                return Err(AuthError::GrantsNothing(grant.name));
            }
            let digest: [u8; 32] = Sha256::digest(token).into();
            if kept
                .iter()
                .any(|k| k.name == grant.name || k.digest == digest)
            {
                return Err(AuthError::Duplicate(grant.name));
            }
            let limit = (grant.requests_per_second > 0).then(|| {
                let burst = if grant.burst == 0 {
                    grant.requests_per_second
                } else {
                    grant.burst
                };
                RateLimit::new(grant.requests_per_second, burst)
            });
            kept.push(Arc::new(Grant {
                digest,
                name: grant.name,
                publish: grant.publish,
                subscribe: grant.subscribe,
                prefix: grant.stream_prefix,
                limit,
            }));
        }
        if kept.is_empty() {
            return Err(AuthError::NoTokens);
        }
        Ok(Self {
            grants: kept.into(),
        })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether there are no tokens (never: [`Auth::new`] refuses none).
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The grant of the bearer token in `authorization`, within its rate: 401 without a
    /// known token, 429 over its rate. The request keeps it: tokens reloaded while it runs
    /// do not change what it may do.
    pub(crate) fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Arc<Grant>, ApiError> {
        let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
        let Some(value) = authorization else {
            return Err(unauthorized(
                "this node needs a bearer token: Authorization: Bearer <token>",
            ));
        };
        let value = value.as_bytes();
        let token = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
            _ => {
                return Err(unauthorized(
                    "the Authorization header must be: Bearer <token>",
                ));
            }
        };
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Every digest is compared, whichever matches.
        let mut found = None;
        for (i, grant) in self.grants.iter().enumerate() {
            if bool::from(grant.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        let grant = found
            .and_then(|i| self.grants.get(i))
            .ok_or_else(|| unauthorized("unknown bearer token"))?;
        if let Some(limit) = &grant.limit
            && !limit.admit(Instant::now())
        {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "token {:?} is over its rate of {} requests per second",
                    grant.name, limit.per_second
                ),
            )
            .hit(Limit::TokenRate));
        }
        Ok(Arc::clone(grant))
    }
}

impl Grant {
    /// The token's name.
    #[cfg(test)]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether this token may do `permission` on `stream`: 403 if not.
    pub(crate) fn allow(&self, permission: Permission, stream: &str) -> Result<(), ApiError> {
        let (granted, verb) = match permission {
            Permission::Publish => (self.publish, "publish"),
            Permission::Subscribe => (self.subscribe, "subscribe"),
        };
        if !granted {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("token {:?} may not {verb}", self.name),
            ));
        }
        if !stream.starts_with(&self.prefix) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "token {:?} may only use streams whose id starts with {:?}",
                    self.name, self.prefix
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.grants.iter().map(|g| g.name.as_str()).collect();
        f.debug_struct("Auth").field("tokens", &names).finish()
    }
}

impl PartialEq for Auth {
    fn eq(&self, other: &Self) -> bool {
        self.grants == other.grants
    }
}

impl Eq for Auth {}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
struct RateLimit {
    per_second: u32,
    burst: u32,
    /// Requests available now (fractional), and when that was computed.
    bucket: Mutex<(f64, Instant)>,
}

/// Two limits are the same when they allow the same rate, whatever their buckets hold now.
impl PartialEq for RateLimit {
    fn eq(&self, other: &Self) -> bool {
        (self.per_second, self.burst) == (other.per_second, other.burst)
    }
}

impl Eq for RateLimit {}

impl RateLimit {
    fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            bucket: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes one request from the bucket if there is one.
    fn admit(&self, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let (available, at) = *bucket;
        let elapsed = now.saturating_duration_since(at);
        let refilled = (available + elapsed.as_secs_f64() * f64::from(self.per_second))
            .min(f64::from(self.burst));
        if refilled >= 1.0 {
            *bucket = (refilled - 1.0, now);
            true
        } else {
            *bucket = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bearer(token: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!("Bearer {token}")).ok()
    }

    #[test]
    fn a_known_token_authenticates_and_others_do_not() -> Result<(), AuthError> {
        let auth = Auth::new([
            TokenGrant::new("a", "aaaaaaaaaaaaaaaa-1"),
            TokenGrant::new("b", "bbbbbbbbbbbbbbbb-2"),
        ])?;
        let name = |h: Option<HeaderValue>| {
            auth.authenticate(h.as_ref())
                .map(|g| g.name().to_owned())
                .map_err(|e| e.code)
        };
        assert_eq!(name(bearer("bbbbbbbbbbbbbbbb-2")), Ok("b".into()));
        assert_eq!(
            name(HeaderValue::from_str("bearer   aaaaaaaaaaaaaaaa-1 ").ok()),
            Ok("a".into())
        );
        for refused in [
            None,
            bearer("bbbbbbbbbbbbbbbb-3"),
            bearer("bbbbbbbbbbbbbbbb-2x"),
            bearer(""),
            HeaderValue::from_str("Basic YWxhZGRpbjpvcGVuc2VzYW1l").ok(),
            HeaderValue::from_str("bbbbbbbbbbbbbbbb-2").ok(),
        ] {
            assert_eq!(
                name(refused.clone()),
                Err(ErrorCode::Unauthorized),
                "{refused:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn permissions_and_prefixes_are_enforced() -> Result<(), AuthError> {
        let mut chat = TokenGrant::new("chat", "cccccccccccccccc-1");
        chat.publish = false;
        chat.stream_prefix = "chat:".into();
        let auth = Auth::new([chat])?;
        let grant = auth
            .authenticate(bearer("cccccccccccccccc-1").as_ref())
            .map_err(|_| AuthError::NoTokens)?;
        let code = |p, s| grant.allow(p, s).map_err(|e| e.code);
        assert_eq!(code(Permission::Subscribe, "chat:lobby"), Ok(()));
        assert_eq!(
            code(Permission::Subscribe, "billing:1"),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(Permission::Publish, "chat:lobby"),
            Err(ErrorCode::Forbidden)
        );
        Ok(())
    }

    #[test]
    fn bad_grants_are_refused() {
        let err = |grants: Vec<TokenGrant>| Auth::new(grants).err();
        assert_eq!(err(vec![]), Some(AuthError::NoTokens));
        assert!(matches!(
            err(vec![TokenGrant::new("a", "short")]),
            Some(AuthError::BadToken(_))
        ));
        assert!(matches!(
            err(vec![TokenGrant::new("a", "has a space 0123456789")]),
            Some(AuthError::BadToken(_))
        ));
        assert!(matches!(
            err(vec![TokenGrant::new("a b", "aaaaaaaaaaaaaaaa")]),
            Some(AuthError::BadName(_))
        ));
        assert!(matches!(
            err(vec![
                TokenGrant::new("a", "aaaaaaaaaaaaaaaa"),
                TokenGrant::new("b", "aaaaaaaaaaaaaaaa"),
            ]),
            Some(AuthError::Duplicate(_))
        ));
        let mut nothing = TokenGrant::new("n", "nnnnnnnnnnnnnnnn");
        nothing.publish = false;
        nothing.subscribe = false;
        assert!(matches!(
            err(vec![nothing]),
            Some(AuthError::GrantsNothing(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_a_token() -> Result<(), AuthError> {
        let grant = TokenGrant::new("visible-name", "hidden-token-0123456789");
        let auth = Auth::new([grant.clone()])?;
        for shown in [format!("{grant:?}"), format!("{auth:?}")] {
            assert!(shown.contains("visible-name"), "{shown}");
            assert!(!shown.contains("hidden-token"), "{shown}");
        }
        Ok(())
    }

    #[test]
    fn the_bucket_admits_its_burst_then_its_rate() {
        let start = Instant::now();
        let limit = RateLimit::new(10, 3);
        let admitted_at = |t: Duration| limit.admit(start + t);
        let zero = Duration::ZERO;
        assert!(admitted_at(zero) && admitted_at(zero) && admitted_at(zero));
        assert!(!admitted_at(zero), "the burst is spent");
        assert!(!admitted_at(Duration::from_millis(50)), "half a token");
        assert!(admitted_at(Duration::from_millis(100)), "one token back");
        assert!(!admitted_at(Duration::from_millis(100)));
        // A long pause refills to the burst, not beyond.
        let later = Duration::from_secs(60);
        assert!(admitted_at(later) && admitted_at(later) && admitted_at(later));
        assert!(!admitted_at(later));
    }
}
