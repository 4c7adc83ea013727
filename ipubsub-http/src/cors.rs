//! [`Cors`]: which web pages of other origins may call the API from a browser.
//!
//! Off by default: without allowed origins no answer carries a CORS header and a preflight
//! `OPTIONS` is a 405 like any other unknown method, so a browser keeps pages of other
//! origins out. With them, a preflight from an allowed origin is answered `204` with what
//! the API accepts, and every answer to an allowed origin names it in
//! `Access-Control-Allow-Origin` and exposes `Retry-After` and the request id. Bearer
//! tokens travel in `Authorization`, set by the page's script: no cookies, so no
//! `Access-Control-Allow-Credentials`, and `"*"` works with auth on.

use std::sync::LazyLock;

use hyper::HeaderMap;
use hyper::header::{self, HeaderValue};

use ipubsub_cluster::REQUEST_ID_HEADER;

/// The methods a preflight allows.
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, POST, OPTIONS");

/// The request headers a preflight allows: auth, JSON bodies, an event stream's resume
/// position and the caller's request id.
static ALLOW_HEADERS: LazyLock<HeaderValue> = LazyLock::new(|| {
    header_list(&[
        "authorization",
        "content-type",
        "last-event-id",
        REQUEST_ID_HEADER,
    ])
});

/// The answer headers a page may read besides the simple ones.
static EXPOSE_HEADERS: LazyLock<HeaderValue> =
    LazyLock::new(|| header_list(&["retry-after", REQUEST_ID_HEADER]));

/// `names`, comma-separated.
fn header_list(names: &[&str]) -> HeaderValue {
    // Header names are visible ASCII.
    HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cors {
    /// No CORS headers at all: only pages of the API's own origin can call it.
    #[default]
    Off,
    /// Pages of every origin (`"*"`).
    AnyOrigin,
    /// Pages of these origins, exactly as a browser sends them (`https://app.example`,
    /// `http://localhost:8080`).
    Origins(Vec<HeaderValue>),
}

/// Why an entry of `http.cors.allowed_origins` is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not an origin: give `scheme://host[:port]` with no path (as a browser sends it \
     in `Origin`), or \"*\" alone"
)]
pub struct BadOrigin {
    /// The entry as configured.
    pub entry: String,
}

impl Cors {
    /// The policy for `allowed`: empty is [`Cors::Off`], `["*"]` is [`Cors::AnyOrigin`],
    /// anything else a list of origins. An entry that is not an origin is an error (so is
    /// `"*"` next to others: it would make them pointless).
    pub fn new(allowed: &[String]) -> Result<Self, BadOrigin> {
        match allowed {
            [] => Ok(Self::Off),
            [any] if any == "*" => Ok(Self::AnyOrigin),
            entries => entries
                .iter()
                .map(|entry| {
                    origin(entry).ok_or_else(|| BadOrigin {
                        entry: entry.clone(),
                    })
                })
                .collect::<Result<_, _>>()
                .map(Self::Origins),
        }
    }

    /// What `Access-Control-Allow-Origin` says to a request from `origin`; `None` when the
    /// origin is not allowed (or the request is not a browser's cross-origin one).
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match self {
            Self::Off => None,
            Self::AnyOrigin => Some(HeaderValue::from_static("*")),
            Self::Origins(allowed) => allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// Whether a request with `headers` and method `OPTIONS` is a preflight this policy
    /// answers.
    pub(crate) fn is_preflight(&self, headers: &HeaderMap) -> bool {
        !matches!(self, Self::Off)
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of the answer to a preflight with `request`'s headers: empty when its
    /// origin is not allowed (the browser then refuses to send the request).
    pub(crate) fn preflight(&self, request: &HeaderMap, answer: &mut HeaderMap) {
        let Some(allowed) = self.allow(request.get(header::ORIGIN)) else {
            self.vary(answer);
            return;
        };
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS.clone());
        answer.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        self.vary(answer);
    }

    /// Adds to `answer` what a browser needs to hand it to a page of the request's origin.
    pub(crate) fn answer(&self, request_origin: Option<&HeaderValue>, answer: &mut HeaderMap) {
        if let Some(allowed) = self.allow(request_origin) {
            answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            answer.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                EXPOSE_HEADERS.clone(),
            );
        }
        self.vary(answer);
    }

    /// A list's answer depends on `Origin`: caches must keep one per origin.
    fn vary(&self, answer: &mut HeaderMap) {
        if matches!(self, Self::Origins(_)) {
            answer.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// `entry` as an origin header value, if it is one: `http` or `https`, `://`, a host with an
/// optional port, nothing after.
fn origin(entry: &str) -> Option<HeaderValue> {
    let rest = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))?;
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    (host_ok && port_ok)
        .then(|| HeaderValue::from_str(entry).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn entries_must_be_origins() {
        assert_eq!(Cors::new(&[]), Ok(Cors::Off));
        assert_eq!(Cors::new(&["*".into()]), Ok(Cors::AnyOrigin));
        for good in [
            "https://app.example",
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
        ] {
            assert!(Cors::new(&[good.into()]).is_ok(), "{good}");
        }
        for bad in [
            "app.example",
            "https://app.example/",
            "https://app.example/path",
            "ftp://app.example",
            "https://",
            "https://app.example:",
            "https://app.example:99999",
            "https://a b",
        ] {
            assert_eq!(
                Cors::new(&[bad.into()]),
                Err(BadOrigin { entry: bad.into() }),
                "{bad}"
            );
        }
        assert!(Cors::new(&["*".into(), "https://a.example".into()]).is_err());
    }

    #[test]
    fn a_listed_origin_is_named_and_others_get_nothing() -> Result<(), BadOrigin> {
        let cors = Cors::new(&["https://app.example".into()])?;
        let mut answer = HeaderMap::new();
        cors.answer(
            Some(&HeaderValue::from_static("https://app.example")),
            &mut answer,
        );
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(
            answer[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "retry-after, x-request-id"
        );
        assert_eq!(answer[header::VARY], "origin");

        let mut answer = HeaderMap::new();
        cors.answer(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut answer,
        );
        assert!(!answer.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(
            answer[header::VARY],
            "origin",
            "caches keep one answer per origin"
        );
        Ok(())
    }

    #[test]
    fn a_preflight_lists_what_the_api_takes() -> Result<(), BadOrigin> {
        let cors = Cors::new(&["*".into()])?;
        let request = headers(&[
            (header::ORIGIN, "http://localhost:3000"),
            (header::ACCESS_CONTROL_REQUEST_METHOD, "POST"),
        ]);
        assert!(cors.is_preflight(&request));
        assert!(!Cors::Off.is_preflight(&request));
        assert!(!cors.is_preflight(&headers(&[(header::ORIGIN, "http://a")])));
        let mut answer = HeaderMap::new();
        cors.preflight(&request, &mut answer);
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST, OPTIONS"
        );
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type, last-event-id, x-request-id"
        );
        assert_eq!(answer[header::ACCESS_CONTROL_MAX_AGE], "600");
        Ok(())
    }

    #[test]
    fn off_adds_nothing() {
        let mut answer = HeaderMap::new();
        Cors::Off.answer(
            Some(&HeaderValue::from_static("https://a.example")),
            &mut answer,
        );
        assert!(answer.is_empty());
    }
}
