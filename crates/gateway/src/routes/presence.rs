//! `/api/v1/presence`: who of the users you share a thread with is online.

use crate::auth::AuthUser;
use crate::error::{Error, Result};
use crate::state::AppState;
use actix_web::web;
use confab_protocol::api::UserPresence;
use confab_protocol::UserId;
use serde::Deserialize;
use std::collections::HashSet;

/// Query of the presence endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// Comma-separated user ids.
    user_ids: String,
}

/// `GET /api/v1/presence?user_ids=a,b,c` → 200 `[{user_id, status, last_seen}]` in the order
/// asked (duplicates once). At most `presence.max_query_users` ids (more: 413 `too_large`); no
/// or malformed ids: 400 `bad_request`. Only about yourself and users you share a thread with:
/// any other id refuses the whole request with 403 `forbidden` (nothing is said about them).
pub async fn get(
    state: web::Data<AppState>,
    me: AuthUser,
    query: web::Query<PresenceQuery>,
) -> Result<web::Json<Vec<UserPresence>>> {
    let raw: Vec<&str> = query
        .user_ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let max = state.settings.presence.max_query_users;
    if raw.len() > max {
        return Err(Error::TooLarge(format!(
            "{} user ids asked; at most {max} per request",
            raw.len()
        )));
    }
    if raw.is_empty() {
        return Err(Error::BadRequest(
            "user_ids must list at least one id".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut users = Vec::with_capacity(raw.len());
    for s in raw {
        let id: UserId = s
            .parse()
            .map_err(|_| Error::BadRequest(format!("not a user id: {s:?}")))?;
        if seen.insert(id) {
            users.push(id);
        }
    }
    let others: Vec<UserId> = users.iter().copied().filter(|u| *u != me.user.id).collect();
    let shared: HashSet<UserId> = state
        .store
        .users_sharing_a_thread(me.user.id, &others)
        .await?
        .into_iter()
        .collect();
    if others.iter().any(|u| !shared.contains(u)) {
        return Err(Error::Forbidden(
            "presence is only visible for users you share a thread with".into(),
        ));
    }
    let statuses = state.presence.statuses(&users).await.map_err(|e| {
        tracing::warn!(error = %e, "presence query failed");
        Error::Unavailable("presence unavailable, retry later".into())
    })?;
    Ok(web::Json(statuses))
}
