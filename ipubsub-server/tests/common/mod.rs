//! A real `ipubsub-server` process on an ephemeral port, and a small HTTP client for it.
#![allow(dead_code)] // each test file uses its own part of the helpers

pub mod cluster;

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

/// The `error.code` of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}
