//! The HTTP ceiling of this machine: a hyper 1 HTTP/1.1 server, built like ipubsub's (tokio
//! multi-thread runtime, one task per connection, TCP_NODELAY, pipelined answers flushed
//! together, mimalloc), that reads each request's body and answers `200 {}`. Load it with the same load generator to see what share of the
//! ceiling ipubsub reaches.
//!
//! `cargo run --release -p ipubsub-benches --bin bare-hyper -- 127.0.0.1:16699`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:16699".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare-hyper listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            });
            let _ = http1::Builder::new()
                .pipeline_flush(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
