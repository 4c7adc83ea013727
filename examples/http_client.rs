//! A small HTTP client of a running ipubsub server: sends a few messages, then long-polls
//! them back until the stream is empty.
//!
//! ```text
//! cargo run -p ipubsub-server -- --config config/single-node.yaml   # in one terminal
//! cargo run -p ipubsub-examples --example http_client -- http://127.0.0.1:16681 my-stream
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    method: Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:16681".into());
    let stream = args.next().unwrap_or_else(|| "example-stream".into());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    for i in 0..3 {
        let body =
            json!({"streamId": stream, "messageUuid": format!("msg-{i}"), "message": {"n": i}});
        let (status, answer) = call(
            &client,
            Method::POST,
            format!("{base}/api/v1/streams/send"),
            Some(body),
        )
        .await?;
        println!("send msg-{i}: {status} {answer}");
    }
    loop {
        let encoded: String = form_urlencoded::byte_serialize(stream.as_bytes()).collect();
        let url = format!("{base}/api/v1/streams/receive?streamId={encoded}&timeoutSeconds=1");
        let (status, answer) = call(&client, Method::GET, url, None).await?;
        println!("receive: {status} {answer}");
        if status != StatusCode::OK {
            break;
        }
    }
    Ok(())
}
