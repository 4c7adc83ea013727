//! Bearer-token auth and the cluster secret: one test per rule.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipubsub_cluster::{
    CLUSTER_SECRET_HEADER, Cluster, ClusterSecret, DEFAULT_VIRTUAL_NODES, FORWARDED_HEADER, Node,
    NodeId, Route,
};
use ipubsub_core::{Engine, StreamId};
use ipubsub_http::{App, Auth, HttpConfig, TokenGrant};
use serde_json::{Value, json};
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

const ADMIN: &str = "admin-token-0123456789";
const CHAT_READER: &str = "chat-reader-0123456789";
const WRITER: &str = "writer-only-0123456789";
const SLOW: &str = "slow-client-0123456789";
const SECRET: &str = "cluster-secret-0123456789";

/// Every kind of token the tests need.
fn auth() -> Result<Auth, Error> {
    let mut chat = TokenGrant::new("chat-reader", CHAT_READER);
    chat.publish = false;
    chat.stream_prefix = "chat:".into();
    let mut writer = TokenGrant::new("writer", WRITER);
    writer.subscribe = false;
    let mut slow = TokenGrant::new("slow", SLOW);
    slow.requests_per_second = 1;
    slow.burst = 2;
    Ok(Auth::new([
        TokenGrant::new("admin", ADMIN),
        chat,
        writer,
        slow,
    ])?)
}

fn config(auth: Option<Auth>, secret: Option<&str>) -> Result<HttpConfig, Error> {
    let mut config = HttpConfig::default();
    config.auth = auth;
    config.cluster_secret = secret.map(ClusterSecret::new).transpose()?;
    Ok(config)
}

fn single(config: HttpConfig) -> Result<App, Error> {
    let me = Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?);
    Ok(App::new(
        Engine::default(),
        None,
        Cluster::single(me),
        config,
    ))
}

/// An answer: status, the headers a test looks at, the JSON body.
struct Answer {
    status: StatusCode,
    code: Value,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
}

async fn call(
    app: &App,
    method: Method,
    uri: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, Error> {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = app
        .handle(request.body(Full::new(Bytes::from(body.to_owned())))?)
        .await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, www_authenticate, retry_after) = (
        response.status(),
        header("www-authenticate"),
        header("retry-after"),
    );
    let bytes = response.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        code: body["error"]["code"].clone(),
        www_authenticate,
        retry_after,
    })
}

fn send_body(stream: &str) -> String {
    json!({"streamId": stream, "messageUuid": "m", "message": {"n": 1}}).to_string()
}

async fn send(app: &App, stream: &str, token: Option<&str>) -> Result<Answer, Error> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    call(
        app,
        Method::POST,
        "/api/v1/streams/send",
        &send_body(stream),
        &headers,
    )
    .await
}

async fn receive(app: &App, stream: &str, token: Option<&str>) -> Result<Answer, Error> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    let uri = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=0");
    call(app, Method::GET, &uri, "", &headers).await
}

#[tokio::test]
async fn without_a_known_token_sends_and_receives_are_401() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    for token in [None, Some("not-a-configured-token"), Some("")] {
        for answer in [
            send(&app, "s", token).await?,
            receive(&app, "s", token).await?,
        ] {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(answer.code, "UNAUTHORIZED");
            assert_eq!(
                answer.www_authenticate.as_deref(),
                Some("Bearer realm=\"ipubsub\"")
            );
        }
    }
    // The right token in the wrong scheme is not a bearer token.
    let basic = format!("Basic {ADMIN}");
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/streams/send",
        &send_body("s"),
        &[("authorization", &basic)],
    )
    .await?;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.engine().buffered(&"s".parse()?), None, "nothing sent");
    Ok(())
}

#[tokio::test]
async fn a_known_token_sends_and_receives() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    assert_eq!(send(&app, "s", Some(ADMIN)).await?.status, StatusCode::OK);
    assert_eq!(
        receive(&app, "s", Some(ADMIN)).await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn a_subscribe_only_token_cannot_send() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    let answer = send(&app, "chat:lobby", Some(CHAT_READER)).await?;
    assert_eq!(
        (answer.status, answer.code),
        (StatusCode::FORBIDDEN, "FORBIDDEN".into())
    );
    assert_eq!(app.engine().buffered(&"chat:lobby".parse()?), None);
    Ok(())
}

#[tokio::test]
async fn a_publish_only_token_cannot_receive() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    assert_eq!(send(&app, "s", Some(WRITER)).await?.status, StatusCode::OK);
    let answer = receive(&app, "s", Some(WRITER)).await?;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(app.engine().buffered(&"s".parse()?), Some(1), "not taken");
    Ok(())
}

#[tokio::test]
async fn a_prefixed_token_only_reaches_its_streams() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    assert_eq!(
        send(&app, "chat:lobby", Some(ADMIN)).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "billing:1", Some(ADMIN)).await?.status,
        StatusCode::OK
    );
    let chat = receive(&app, "chat:lobby", Some(CHAT_READER)).await?;
    assert_eq!(chat.status, StatusCode::OK);
    let billing = receive(&app, "billing:1", Some(CHAT_READER)).await?;
    assert_eq!(
        (billing.status, billing.code),
        (StatusCode::FORBIDDEN, "FORBIDDEN".into())
    );
    // `chat` without the colon is not under `chat:`.
    let near = receive(&app, "chat", Some(CHAT_READER)).await?;
    assert_eq!(near.status, StatusCode::FORBIDDEN);
    assert_eq!(app.engine().buffered(&"billing:1".parse()?), Some(1));
    Ok(())
}

#[tokio::test]
async fn a_token_over_its_rate_is_429_with_retry_after() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    // A burst of 2 at 1 per second: the third request within the second is refused.
    assert_eq!(send(&app, "s", Some(SLOW)).await?.status, StatusCode::OK);
    assert_eq!(send(&app, "s", Some(SLOW)).await?.status, StatusCode::OK);
    let refused = send(&app, "s", Some(SLOW)).await?;
    assert_eq!(
        (refused.status, refused.code),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED".into())
    );
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert_eq!(app.engine().buffered(&"s".parse()?), Some(2));
    // Other tokens have their own budget.
    assert_eq!(send(&app, "s", Some(ADMIN)).await?.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(&app, "s", Some(SLOW)).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn probes_stay_open_and_the_cluster_view_needs_a_token() -> TestResult {
    let app = single(config(Some(auth()?), None)?)?;
    for path in ["/health", "/ready", "/"] {
        assert_eq!(
            call(&app, Method::GET, path, "", &[]).await?.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let view = call(&app, Method::GET, "/api/v1/cluster", "", &[]).await?;
    assert_eq!(view.status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {CHAT_READER}");
    let view = call(
        &app,
        Method::GET,
        "/api/v1/cluster",
        "",
        &[("authorization", &bearer)],
    )
    .await?;
    assert_eq!(view.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_request_claiming_to_be_forwarded_needs_the_cluster_secret() -> TestResult {
    // With a secret: only the secret makes a request a forwarded one.
    let app = single(config(Some(auth()?), Some(SECRET))?)?;
    for secret in [None, Some("wrong-secret-0123456789"), Some("")] {
        let mut headers = vec![(FORWARDED_HEADER, "n2")];
        headers.extend(secret.map(|s| (CLUSTER_SECRET_HEADER, s)));
        let answer = call(
            &app,
            Method::POST,
            "/api/v1/streams/send",
            &send_body("s"),
            &headers,
        )
        .await?;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{secret:?}");
    }
    assert_eq!(app.engine().buffered(&"s".parse()?), None);
    // With it, the forwarding node's checks stand: no token is needed here.
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/streams/send",
        &send_body("s"),
        &[(FORWARDED_HEADER, "n2"), (CLUSTER_SECRET_HEADER, SECRET)],
    )
    .await?;
    assert_eq!(answer.status, StatusCode::OK);

    // Auth without a secret: no request can prove it was forwarded, so none is taken.
    let app = single(config(Some(auth()?), None)?)?;
    let bearer = format!("Bearer {ADMIN}");
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/streams/send",
        &send_body("s"),
        &[(FORWARDED_HEADER, "n2"), ("authorization", &bearer)],
    )
    .await?;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    // A secret without auth still guards routing.
    let app = single(config(None, Some(SECRET))?)?;
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/streams/send",
        &send_body("s"),
        &[(FORWARDED_HEADER, "n2")],
    )
    .await?;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    Ok(())
}

/// Two real nodes with auth and a shared secret: a client's token is checked where it
/// arrives, the forward is proven by the secret, and the owner serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_between_nodes_with_auth_and_a_secret() -> TestResult {
    let (l1, l2) = (
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    );
    let n1 = Node::new(NodeId::new("n1")?, l1.local_addr()?);
    let n2 = Node::new(NodeId::new("n2")?, l2.local_addr()?);
    let mut stops = Vec::new();
    let mut apps = Vec::new();
    for (me, other, listener) in [(&n1, &n2, l1), (&n2, &n1, l2)] {
        let cluster = Cluster::with_members(me.clone(), [other.clone()], DEFAULT_VIRTUAL_NODES);
        let app = App::new(
            Engine::default(),
            None,
            cluster,
            config(Some(auth()?), Some(SECRET))?,
        );
        stops.push(common::serve(listener, app.clone()));
        apps.push(app);
    }
    let view = Cluster::with_members(n1.clone(), [n2.clone()], DEFAULT_VIRTUAL_NODES);
    let stream = (0..)
        .map(|i| StreamId::new(format!("chat:{i}")))
        .find(|s| {
            s.as_ref()
                .is_ok_and(|s| matches!(view.route(s), Route::Forward(_)))
        })
        .ok_or("no stream owned by n2")??;

    let post = |token: &'static str| {
        let stream = stream.as_str().to_owned();
        http(
            n1.http_addr(),
            Method::POST,
            "/api/v1/streams/send".to_owned(),
            send_body(&stream),
            token,
        )
    };
    // Refused at the first node: the owner never sees it.
    assert_eq!(
        post("wrong-token-0123456789").await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(post(CHAT_READER).await?, StatusCode::FORBIDDEN);
    assert_eq!(apps[1].engine().buffered(&stream), None);
    // Allowed: forwarded with the secret and buffered at the owner.
    assert_eq!(post(WRITER).await?, StatusCode::OK);
    assert_eq!(apps[1].engine().buffered(&stream), Some(1));
    assert_eq!(apps[0].engine().buffered(&stream), None);
    let uri = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=0");
    let status = http(n1.http_addr(), Method::GET, uri, String::new(), CHAT_READER).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(apps[1].engine().buffered(&stream), Some(0));
    drop(stops);
    Ok(())
}

async fn http(
    to: SocketAddr,
    method: Method,
    path: String,
    body: String,
    token: &str,
) -> Result<StatusCode, Error> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{to}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}
