//! `/api/v1/threads`: create threads, page history, send over HTTP, add and remove members.

use crate::auth::AuthUser;
use crate::error::{Error, Result};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use confab_protocol::api::{AddMembers, CreateThread, HistoryPage, SendMessage, SentMessage};
use confab_protocol::ThreadId;
use serde::Deserialize;

/// `POST /api/v1/threads` → 201 with the thread (the same one again for an existing direct
/// pair, with `"created": false`).
pub async fn create(
    state: web::Data<AppState>,
    me: AuthUser,
    body: web::Json<CreateThread>,
) -> Result<HttpResponse> {
    let (thread, created) = state
        .chat
        .create_thread(&me.user, body.into_inner())
        .await?;
    let mut v = serde_json::to_value(&thread).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("created".into(), serde_json::Value::Bool(created));
    }
    Ok(HttpResponse::Created().json(v))
}

/// `POST /api/v1/threads/{id}/messages {client_msg_id, body}` → 201 once stored (200 for a retry
/// of a stored one, `duplicate: true`): the `send` frame over HTTP, with its checks, its rate
/// limit (the user's, shared with their sockets on this node) and its delivery to every
/// member's sessions — the sender's too.
pub async fn send(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
    body: web::Json<SendMessage>,
) -> Result<HttpResponse> {
    let thread = path.into_inner();
    let SendMessage {
        client_msg_id,
        body,
    } = body.into_inner();
    if !state.take_user_send(me.user.id) {
        return Err(Error::RateLimited("too many messages; slow down".into()));
    }
    // A drain waits for this commit and its answer, as for a socket's send.
    let _in_flight = state.tracker.token();
    let (msg, duplicate) = state
        .chat
        .send(me.user.id, thread, client_msg_id, body)
        .await?;
    let sent = SentMessage {
        thread_id: msg.thread_id,
        client_msg_id: msg.client_msg_id,
        id: msg.id,
        seq: msg.seq,
        created_at: msg.created_at,
        duplicate,
    };
    Ok(if duplicate {
        HttpResponse::Ok().json(sent)
    } else {
        HttpResponse::Created().json(sent)
    })
}

/// Query of the history endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Return messages with `seq` below this (newest page when absent).
    before_seq: Option<i64>,
    /// Page size (1 to `limits.list_page_max`). Default: 10 with `before_seq`; without it the
    /// newest 20, or every unread message when more than 20 are unread (up to
    /// `limits.max_unread_page`).
    limit: Option<u64>,
}

/// `GET /api/v1/threads/{id}/messages?before_seq=&limit=` → a page, ascending; members only.
pub async fn history(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
    query: web::Query<HistoryQuery>,
) -> Result<web::Json<HistoryPage>> {
    let thread = path.into_inner();
    let q = query.into_inner();
    let max = state.settings.limits.list_page_max.max(1);
    if q.limit.is_some_and(|l| !(1..=max).contains(&l)) {
        return Err(Error::BadRequest(format!("limit must be 1 to {max}")));
    }
    if matches!(q.before_seq, Some(b) if b < 1) {
        return Err(Error::BadRequest("before_seq must be at least 1".into()));
    }
    let (messages, last_change) = state
        .chat
        .history(me.user.id, thread, q.before_seq, q.limit)
        .await?;
    let next_before_seq = messages.first().map(|m| m.seq).filter(|s| *s > 1);
    Ok(web::Json(HistoryPage {
        messages,
        next_before_seq,
        last_change,
    }))
}

/// `POST /api/v1/threads/{id}/members {user_ids}` → 200 with the thread; members only.
pub async fn add_members(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
    body: web::Json<AddMembers>,
) -> Result<HttpResponse> {
    let thread = state
        .chat
        .add_members(me.user.id, path.into_inner(), &body.user_ids)
        .await?;
    Ok(HttpResponse::Ok().json(thread))
}

/// `DELETE /api/v1/threads/{id}/members/me` → 204: leave a group thread.
pub async fn leave(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
) -> Result<HttpResponse> {
    state.chat.leave(me.user.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}
