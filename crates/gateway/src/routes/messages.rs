//! `/api/v1/messages/{id}`: editing, deleting and reacting over HTTP (the `edit`, `delete`,
//! `react` and `unreact` frames, with the same rules and the same events to every member's
//! sessions), and reporting a message to moderators.

use crate::auth::AuthUser;
use crate::error::Result;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use confab_protocol::api::{EditMessage, ReportMessage};
use confab_protocol::MessageId;

/// `PATCH /api/v1/messages/{id} {body}` → 204; the sender only (`forbidden` for other members,
/// `not_member` for outsiders and unknown ids). Members get `message_edited`.
pub async fn edit(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<MessageId>,
    body: web::Json<EditMessage>,
) -> Result<HttpResponse> {
    state
        .chat
        .edit(me.user.id, path.into_inner(), &body.body)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /api/v1/messages/{id}` → 204 (again: 204, nothing announced); the sender only.
/// Members get `message_deleted`.
pub async fn delete(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<MessageId>,
) -> Result<HttpResponse> {
    state.chat.delete(me.user.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `PUT /api/v1/messages/{id}/reactions/{emoji}` → 204 (idempotent); members get `reaction`
/// when it changed something. The emoji is percent-encoded in the path.
pub async fn react(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<(MessageId, String)>,
) -> Result<HttpResponse> {
    set_reaction(&state, &me, path.into_inner(), true).await
}

/// `DELETE /api/v1/messages/{id}/reactions/{emoji}` → 204 (idempotent).
pub async fn unreact(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<(MessageId, String)>,
) -> Result<HttpResponse> {
    set_reaction(&state, &me, path.into_inner(), false).await
}

async fn set_reaction(
    state: &AppState,
    me: &AuthUser,
    (id, emoji): (MessageId, String),
    added: bool,
) -> Result<HttpResponse> {
    state.chat.react(me.user.id, id, &emoji, added).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/messages/{id}/report {reason}` → 201 `{id, message_id, created_at}`; members
/// of the message's thread only (`not_member` otherwise, also for an unknown message).
/// Moderators read the `reports` table.
pub async fn report(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<MessageId>,
    body: web::Json<ReportMessage>,
) -> Result<HttpResponse> {
    let report = state
        .chat
        .report(me.user.id, path.into_inner(), &body.reason)
        .await?;
    Ok(HttpResponse::Created().json(report))
}
