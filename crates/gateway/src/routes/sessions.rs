//! `/api/v1/sessions`: log in (issue a token) and log out (revoke it).

use crate::auth::{new_token, token_hash, verify_password, AuthUser};
use crate::envelope::ControlEvent;
use crate::error::{Error, Result};
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use confab_protocol::api::{Credentials, LoginResponse};

/// `POST /api/v1/sessions` → 200 `{token, user, expires_at}`; 401 on wrong credentials.
pub async fn login(
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<web::Json<LoginResponse>> {
    let Credentials { username, password } = body.into_inner();
    let wrong = || Error::Unauthorized("wrong username or password".into());
    // No stored name holds a NUL (registration allows letters, digits, `_`, `-`, `.`), and
    // Postgres would refuse to even compare one: such a login is just wrong credentials.
    if username.len() > 64 || password.len() > 1024 || username.contains('\0') {
        return Err(wrong());
    }
    let found = state.store.user_for_login(&username).await?;
    let Some(found) = found else {
        return Err(wrong());
    };
    let auth = state.settings.auth.clone();
    let hash = found.password_hash.clone();
    let ok = web::block(move || verify_password(&auth, &password, &hash))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    if !ok {
        return Err(wrong());
    }
    let token = new_token();
    let expires_at =
        chrono::Utc::now() + chrono::Duration::seconds(state.settings.auth.token_ttl_secs as i64);
    state
        .store
        .insert_token(&token_hash(&token), found.user.id, expires_at)
        .await?;
    Ok(web::Json(LoginResponse {
        token,
        user: found.user,
        expires_at,
    }))
}

/// `DELETE /api/v1/sessions` (with the bearer token) → 204; the token stops working at once and
/// the WebSocket sessions opened with it are closed (1008) on every node.
///
/// The close is announced before the token is revoked: revoked unannounced (Redis unreachable),
/// the token's open sessions on other nodes would go on receiving. So with Redis unreachable the
/// logout is refused (503) and changes nothing; the client retries. A second announcement after
/// the revocation closes a session the token opened in between.
pub async fn logout(state: web::Data<AppState>, me: AuthUser) -> Result<HttpResponse> {
    let token_tag = u64::from_str_radix(me.token_hash.get(..16).unwrap_or("0"), 16).unwrap_or(0);
    let kick = ControlEvent::Kick { token_tag };
    // A kick that goes out late closes the sessions of a token still valid: they reconnect.
    state.chat.announce_or_refuse(&kick, None).await?;
    state.store.revoke_token(&me.token_hash).await?;
    state.chat.publish_control_confirmed(&kick).await;
    Ok(HttpResponse::NoContent().finish())
}
