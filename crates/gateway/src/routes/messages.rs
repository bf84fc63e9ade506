//! `/api/v1/messages/{id}`: reporting a message to moderators.

use crate::auth::AuthUser;
use crate::error::Result;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use confab_protocol::api::ReportMessage;
use confab_protocol::MessageId;

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
