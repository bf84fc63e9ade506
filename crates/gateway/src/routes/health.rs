//! `/healthz` (the process is alive), `/readyz` (it can serve: database and broker reachable,
//! migrations applied, not draining) and `/metrics`.

use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::time::Duration;

/// Always 200 while the process runs.
pub async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 when ready, 503 with the failing checks otherwise.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let t = Duration::from_secs(2);
    let draining = state.is_draining();
    let db = matches!(
        tokio::time::timeout(t, state.store.migrations_applied()).await,
        Ok(Ok(true))
    );
    let broker = state.broker.is_healthy();
    let redis = match &state.redis_pool {
        None => true,
        Some(pool) => matches!(
            tokio::time::timeout(t, async {
                let mut c = pool.get().await.map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut *c)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await,
            Ok(Ok(_))
        ),
    };
    let ok = !draining && db && broker && redis;
    let body = json!({
        "ready": ok,
        "draining": draining,
        "database": db,
        "redis": redis,
        "pubsub": broker,
        "node": state.node_id,
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
