//! `/api/v1/rooms`: list public rooms, join one, or join a random one.

use super::pages::PageQuery;
use crate::auth::AuthUser;
use crate::error::Result;
use crate::state::AppState;
use actix_web::web;
use confab_protocol::api::RoomList;
use confab_protocol::{Thread, ThreadId};

/// `GET /api/v1/rooms?cursor=&limit=` → public rooms, most recent activity first, with member
/// counts and whether the caller is in each.
pub async fn list(
    state: web::Data<AppState>,
    me: AuthUser,
    query: web::Query<PageQuery>,
) -> Result<web::Json<RoomList>> {
    let (cursor, limit) = query.resolve(&state.settings.limits)?;
    let (rooms, next) = state.store.public_rooms(me.user.id, cursor, limit).await?;
    Ok(web::Json(RoomList {
        rooms,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// `POST /api/v1/rooms/{id}/join` → 200 with the room; 404 `not_found` for a private or
/// missing room. Joining a room one is already in changes nothing.
pub async fn join(
    state: web::Data<AppState>,
    me: AuthUser,
    path: web::Path<ThreadId>,
) -> Result<web::Json<Thread>> {
    Ok(web::Json(
        state.chat.join_public(&me.user, path.into_inner()).await?,
    ))
}

/// `POST /api/v1/rooms/random/join` → 200 with a public room the caller was not in (now
/// joined); 404 `not_found` when there is none.
pub async fn join_random(state: web::Data<AppState>, me: AuthUser) -> Result<web::Json<Thread>> {
    Ok(web::Json(state.chat.join_random(&me.user).await?))
}
