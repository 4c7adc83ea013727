//! A real `ipubsub-server` process on an ephemeral port, and a small HTTP client for it.
#![allow(dead_code)] // each test file uses its own part of the helpers

pub mod cluster;
pub mod databases;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A server process, killed when dropped.
pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    /// The server's config file and data directory live here.
    pub dir: tempfile::TempDir,
    client: Client,
}

impl TestServer {
    /// A server with the default configuration.
    pub fn start() -> Self {
        Self::start_with("", &[])
    }

    /// A server whose config file adds `yaml` and whose environment adds `env`.
    #[track_caller]
    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.yaml");
        let mut file = std::fs::File::create(&config).expect("config file");
        writeln!(
            file,
            "node:\n  name: test-node\n  http_bind_addr_port: \"127.0.0.1:0\"\n{yaml}"
        )
        .expect("write config");
        let data = dir.path().join("data");
        Self::spawn(dir, &config, &data, env)
    }

    /// A server on an existing data directory (to restart one), with `config` and `env`.
    #[track_caller]
    pub fn spawn(
        dir: tempfile::TempDir,
        config: &std::path::Path,
        data: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipubsub-server"))
            .arg("--config")
            .arg(config)
            .env("IPUBSUB_STORAGE__EMBEDDED__PATH", data)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ipubsub-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self {
            child,
            addr,
            dir,
            client: Client::new(addr),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set size now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request and returns the status and the body parsed as JSON.
    pub async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let (status, bytes) = self.call_raw(method, path, body).await;
        let json =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    /// The client of this server.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends a request and returns the status and the raw body.
    pub async fn call_raw(&self, method: Method, path: &str, body: &str) -> (StatusCode, Bytes) {
        self.client.raw(method, path, body.to_owned(), &[]).await
    }

    /// `POST /api/v1/streams/send` with `body`.
    pub async fn send(&self, body: Value) -> (StatusCode, Value) {
        self.client.send(body).await
    }

    /// `GET /api/v1/streams/receive?{query}`.
    pub async fn receive(&self, query: &str) -> (StatusCode, Value) {
        self.client.receive(query).await
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl TestServer {
    /// Kills the process with SIGKILL and returns its directory, data and all.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of one server address, without owning the server.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    client: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request with extra `headers`; returns the status and the raw body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Bytes) {
        let (status, _, bytes) = self.exchange(method, path, body, headers).await;
        (status, bytes)
    }

    /// Sends a request with extra `headers`; returns the status, the answer's headers and the
    /// raw body.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        let response = self.client.request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, bytes)
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.raw(method, path, body, headers).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The sum of the samples of `/metrics` whose line starts with `prefix` (a metric's name,
    /// or its name and some labels); `None` if there is none.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = self.raw(Method::GET, "/metrics", String::new(), &[]).await;
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }

    /// `POST /api/v1/streams/send`.
    pub async fn send(&self, body: Value) -> (StatusCode, Value) {
        self.json(Method::POST, "/api/v1/streams/send", body.to_string(), &[])
            .await
    }

    /// `GET /api/v1/streams/receive?{query}`.
    pub async fn receive(&self, query: &str) -> (StatusCode, Value) {
        self.json(
            Method::GET,
            &format!("/api/v1/streams/receive?{query}"),
            String::new(),
            &[],
        )
        .await
    }

    /// A receive marked as forwarded: served by this node whoever owns the stream.
    pub async fn receive_local(&self, query: &str) -> (StatusCode, Value) {
        let path = format!("/api/v1/streams/receive?{query}");
        self.json(
            Method::GET,
            &path,
            String::new(),
            &[("x-ipubsub-forwarded", "test")],
        )
        .await
    }
}

/// An HTTP/2 client (cleartext, prior knowledge) of the server at `addr`: every request over
/// one connection.
pub fn h2_client(addr: SocketAddr) -> Client {
    Client {
        addr,
        client: HttpClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    }
}

impl Client {
    /// `GET {path}` asked as an event stream, with extra `headers`: its status, headers and
    /// events as they come.
    pub async fn events(&self, path: &str, headers: &[(&str, &str)]) -> Events {
        let mut request = Request::get(format!("http://{}{path}", self.addr))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let response = self.client.request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        Events {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body,
            buffer: Vec::new(),
        }
    }
}

/// One event as a client reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// `event:`; `None` for the default (`message`).
    pub kind: Option<String>,
    pub id: Option<String>,
    /// `data:` lines, joined with `\n`.
    pub data: String,
    /// A comment (heartbeat), with no fields.
    pub comment: bool,
}

impl Event {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An event stream being read. The server writes `\n` line ends, so an event (or a comment)
/// ends at a blank line.
pub struct Events {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub version: hyper::Version,
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl Events {
    /// The next event or comment within `within`; `None` when the stream ended or nothing
    /// came.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block[..end]).into_owned();
                let mut event = Event::default();
                let mut data = Vec::new();
                for line in text.split('\n') {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "" => event.comment = true,
                        "data" => data.push(value.to_owned()),
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.kind = Some(value.to_owned()),
                        _ => {}
                    }
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await;
            match frame {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }

    /// The next event that is not a comment (or `retry:` line) within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            // The `retry:` line has neither data nor a kind.
            let bare = event.data.is_empty() && event.kind.is_none();
            if !(event.comment || bare) {
                return Some(event);
            }
        }
    }
}

/// The `message` of each item of a `{"messages": [...]}` answer (none if it is not one).
pub fn messages(body: &Value) -> Vec<&Value> {
    body["messages"]
        .as_array()
        .map_or_else(Vec::new, |m| m.iter().map(|m| &m["message"]).collect())
}

/// The `error.code` of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}
