//! `/api/v1/users`: register and find people.

use crate::auth::{hash_password, AuthUser};
use crate::error::{Error, Result};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use confab_protocol::api::Credentials;
use confab_protocol::UserRef;
use serde::Deserialize;

/// Username rules: 3–32 of letters, digits, `_`, `-`, `.`.
pub fn validate_username(name: &str) -> Result<()> {
    let n = name.chars().count();
    if !(3..=32).contains(&n) {
        return Err(Error::BadRequest(
            "username must be 3 to 32 characters".into(),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(Error::BadRequest(
            "username may only contain letters, digits, '_', '-' and '.'".into(),
        ));
    }
    Ok(())
}

/// Password rules: 8–256 characters.
pub fn validate_password(pw: &str) -> Result<()> {
    let n = pw.chars().count();
    if !(8..=256).contains(&n) {
        return Err(Error::BadRequest(
            "password must be 8 to 256 characters".into(),
        ));
    }
    Ok(())
}

/// `POST /api/v1/users` → 201 `{id, username}`; 409 when the name is taken.
pub async fn register(
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse> {
    let Credentials { username, password } = body.into_inner();
    validate_username(&username)?;
    validate_password(&password)?;
    let auth = state.settings.auth.clone();
    let hash = web::block(move || hash_password(&auth, &password))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let user = state
        .store
        .create_user(&username, &hash)
        .await
        .map_err(|e| match e {
            confab_persistence::Error::Conflict(_) => {
                Error::Conflict("username is already taken".into())
            }
            other => other.into(),
        })?;
    Ok(HttpResponse::Created().json(user))
}

/// Query of `GET /api/v1/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Username prefix (case-insensitive).
    #[serde(default)]
    q: String,
}

/// `GET /api/v1/users?q=` → up to 20 users whose name starts with `q`, not the caller.
pub async fn search(
    state: web::Data<AppState>,
    me: AuthUser,
    query: web::Query<SearchQuery>,
) -> Result<web::Json<Vec<UserRef>>> {
    let q = query.into_inner().q;
    if q.chars().count() > 32 {
        return Err(Error::BadRequest("query too long".into()));
    }
    crate::chat::check_no_nul("q", &q)?;
    Ok(web::Json(
        state.store.search_users(&q, me.user.id, 20).await?,
    ))
}

/// `GET /api/v1/users/me` → 200 the token's user (`{id, username}`): who a stored token belongs
/// to, without opening a WebSocket for its `hello`.
pub async fn me(me: AuthUser) -> web::Json<UserRef> {
    web::Json(me.user)
}
