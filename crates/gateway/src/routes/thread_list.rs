//! `GET /api/v1/threads` (the thread list), `GET /api/v1/threads/{id}` (one entry of it) and
//! `POST /api/v1/threads/{id}/read` (read state).

use super::pages::PageQuery;
use crate::auth::AuthUser;
use crate::error::{Error, Result};
use crate::state::AppState;
use actix_web::web;
use confab_protocol::api::{MarkRead, ReadState, ThreadList, ThreadListItem};
use confab_protocol::ThreadId;

/// `GET /api/v1/threads?cursor=&limit=` → the caller's threads, most recent activity first,
/// with members, last message, unread count and read position.
pub async fn list(
    state: web::Data<AppState>,
    me: AuthUser,
    query: web::Query<PageQuery>,
) -> Result<web::Json<ThreadList>> {
    let (cursor, limit) = query.resolve(&state.settings.limits)?;
    let (threads, next) = state.store.thread_list(me.user.id, cursor, limit).await?;
    Ok(web::Json(ThreadList {
        threads,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// `GET /api/v1/threads/{id}` → 200 the thread as its thread-list entry (members, last
/// message, unread count, read position); `not_member` for outsiders and unknown ids alike.
pub async fn show(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
) -> Result<web::Json<ThreadListItem>> {
    state
        .store
        .thread_item(me.user.id, path.into_inner())
        .await?
        .map(web::Json)
        .ok_or(Error::NotMember)
}

/// `POST /api/v1/threads/{id}/read {seq}` → 200 `{thread_id, last_read_seq}`; members only.
/// The same as the `mark_read` frame: clamped, never backwards, announced as `read`.
pub async fn mark_read(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
    body: web::Json<MarkRead>,
) -> Result<web::Json<ReadState>> {
    let thread_id = path.into_inner();
    let last_read_seq = state
        .chat
        .mark_read(me.user.id, thread_id, body.seq)
        .await?;
    Ok(web::Json(ReadState {
        thread_id,
        last_read_seq,
    }))
}
