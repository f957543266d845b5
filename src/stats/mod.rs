//! The stats listener: the proxy's own health, counters as JSON and Prometheus text,
//! and (with auth configured) admin actions. Runs as a pingora background service on
//! its own bound listener.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::runtime::Shared;

/// The stats HTTP app.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new().route("/health", get(health)).with_state(shared)
}

async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snapshot = shared.snapshot();
    Json(serde_json::json!({
        "status": if shared.stopping() { "stopping" } else { "ok" },
        "generation": snapshot.generation,
        "uptime_seconds": shared.registry.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Serve the stats app on `listener` until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let result = axum::serve(listener, app(shared))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "stats listener failed");
    }
}

/// The stats listener as a pingora background service.
pub struct StatsService {
    pub shared: Arc<Shared>,
    /// Bound before the server starts, so a taken port fails `run` at once.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for StatsService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => serve(listener, Arc::clone(&self.shared), shutdown).await,
            Err(e) => tracing::error!(error = %e, "stats listener failed"),
        }
    }
}
