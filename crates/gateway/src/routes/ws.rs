//! `GET /ws`: authenticate, check the protocol version and admission, then upgrade. Every
//! refusal happens *before* the upgrade, as an HTTP status with a JSON body.

use crate::auth::{authenticate, bearer_token};
use crate::error::Error;
use crate::session::{self, ConnectOptions};
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use confab_protocol::PROTOCOL_VERSION;
use serde::Deserialize;

/// Query of the upgrade.
#[derive(Deserialize)]
pub struct WsQuery {
    /// Requested protocol version (default: this server's).
    v: Option<u32>,
    /// `1`/`true`: hold live delivery until the client's `resume` frame.
    resume: Option<String>,
}

/// Upgrade to a WebSocket session.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    if state.is_draining() {
        return Err(Error::Unavailable("node is draining".into()));
    }
    // WebSockets are outside CORS: a page of any site may open one, so the origin list is
    // enforced here (browsers always send `Origin` on an upgrade).
    if !state
        .origins
        .allows(req.headers().get(actix_web::http::header::ORIGIN))
    {
        return Err(Error::Forbidden(
            "this origin may not open WebSockets here (server.cors_allowed_origins)".into(),
        ));
    }
    let q = web::Query::<WsQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or(WsQuery {
            v: None,
            resume: None,
        });
    let sub = subprotocol_version(&req);
    let version = q.v.or(sub).unwrap_or(PROTOCOL_VERSION);
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(format!(
            "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
        )));
    }
    let auth = authenticate(&state, bearer_token(&req)).await?;
    {
        let mut bucket = state.admission.lock().unwrap_or_else(|p| p.into_inner());
        if !bucket.try_take() {
            let wait = bucket.wait_secs().ceil().max(1.0) as u64;
            state.metrics.connects_refused.inc();
            return Ok(HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", wait.to_string()))
                .json(
                    Error::Unavailable("too many new connections; retry with backoff".into())
                        .body(),
                ));
        }
    }
    let hard_max = state.settings.limits.hard_max_frame_bytes;
    let (mut response, ws, stream) = actix_ws::handle(&req, body)
        .map_err(|e| Error::BadRequest(format!("websocket handshake failed: {e}")))?;
    if sub.is_some() {
        // A browser that offered a subprotocol fails the handshake unless one is selected.
        response.headers_mut().insert(
            actix_web::http::header::SEC_WEBSOCKET_PROTOCOL,
            actix_web::http::header::HeaderValue::from_static("confab.v1"),
        );
    }
    let stream = stream.max_frame_size(hard_max);
    let opts = ConnectOptions {
        hold_for_resume: matches!(q.resume.as_deref(), Some("1" | "true")),
    };
    let state = state.into_inner();
    let (started, start) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(session::run(state, auth, ws, stream, opts, started));
    match start.await {
        Ok(Ok(())) => Ok(response),
        // 503 (or 429 for a user at `limits.max_sessions_per_user`) with `Retry-After` and the
        // JSON body: `Error`'s response.
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err(Error::Unavailable(
            "cannot start a session: the session ended while starting".into(),
        )),
    }
}

/// `Sec-WebSocket-Protocol: confab.v1` also selects a version.
fn subprotocol_version(req: &HttpRequest) -> Option<u32> {
    let h = req.headers().get("sec-websocket-protocol")?.to_str().ok()?;
    h.split(',')
        .filter_map(|p| p.trim().strip_prefix("confab.v"))
        .find_map(|v| v.parse().ok())
}
