//! What the HTTP adapter's test files share: a node serving on a listener until stopped.
#![allow(dead_code)] // each test file uses its own part

use std::time::Duration;

use ipubsub_http::App;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Serves `app` on `listener` until the returned sender is dropped.
pub fn serve(listener: TcpListener, app: App) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ipubsub_http::serve(
        listener,
        app,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    stop
}

/// [`serve`] over HTTPS with `tls`.
#[cfg(feature = "tls")]
pub fn serve_tls(
    listener: TcpListener,
    app: App,
    tls: ipubsub_http::tls::ServerTls,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ipubsub_http::serve_tls(
        listener,
        app,
        tls,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    stop
}
