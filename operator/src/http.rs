//! The operator's own HTTP server: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// The router.
pub fn app(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }),
        )
        // Liveness: reconciles finish (see `crate::health`).
        .route(
            "/healthz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.health.unhealthy() {
                    None => (StatusCode::OK, "ok".to_string()).into_response(),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
                }
            }),
        )
        // Readiness: a follower stands by; the leader once its cache has synced.
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.health.unready() {
                    None => (StatusCode::OK, "ready").into_response(),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
                }
            }),
        )
        .with_state(metrics)
}

/// Serves on `address` until `shutdown` resolves.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_health_and_readiness_answer() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        metrics.leader.set(1);
        let health = Arc::clone(&metrics.health);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app(metrics)).await });
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .expect("write");
            let mut text = String::new();
            stream.read_to_string(&mut text).await.expect("read");
            text
        };
        assert!(get("/metrics").await.contains("phoenix_operator_leader 1"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(
            get("/readyz").await.starts_with("HTTP/1.1 200"),
            "a follower stands by"
        );
        health.set_leading(true);
        assert!(
            get("/readyz").await.starts_with("HTTP/1.1 503"),
            "a leader not yet synced"
        );
        health.set_synced();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    }
}
