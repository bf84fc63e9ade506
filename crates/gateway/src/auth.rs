//! Passwords (argon2id) and bearer tokens (random, stored as SHA-256), and the extractor that
//! authenticates HTTP requests.

use crate::config::AuthSettings;
use crate::error::{Error, Result};
use crate::state::AppState;
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use base64::Engine;
use chrono::{DateTime, Utc};
use confab_protocol::UserRef;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;

fn argon(settings: &AuthSettings) -> Result<Argon2<'static>> {
    let params = Params::new(
        settings.argon2_memory_kib,
        settings.argon2_iterations,
        1,
        None,
    )
    .map_err(|e| Error::Internal(format!("argon2 params: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a password (CPU-heavy: call from a blocking thread).
pub fn hash_password(settings: &AuthSettings, password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon(settings)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("argon2 hash: {e}")))
}

/// Check a password against a stored hash (CPU-heavy: call from a blocking thread).
pub fn verify_password(settings: &AuthSettings, password: &str, hash: &str) -> Result<bool> {
    let parsed =
        PasswordHash::new(hash).map_err(|e| Error::Internal(format!("stored hash: {e}")))?;
    Ok(argon(settings)?
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// A new random bearer token (256 bits, URL-safe).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database stores for a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bearer token of a request: `Authorization: Bearer …`, else `?token=…` (browsers cannot set
/// headers on a WebSocket upgrade).
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        if let Ok(s) = h.to_str() {
            if let Some(t) = s
                .strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
            {
                return Some(t.trim().to_owned());
            }
        }
    }
    web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().token)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct AuthUser {
    /// Who.
    pub user: UserRef,
    /// The SHA-256 of their token (to revoke it, and to close its sessions).
    pub token_hash: String,
    /// When the token stops being valid: a WebSocket session opened with it is closed (1008)
    /// at its first heartbeat after this.
    pub expires_at: DateTime<Utc>,
}

/// Resolve a token to its user, or `Unauthorized`.
pub async fn authenticate(state: &AppState, token: Option<String>) -> Result<AuthUser> {
    let token = token.ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
    if token.is_empty() || token.len() > 256 {
        return Err(Error::Unauthorized("invalid token".into()));
    }
    let hash = token_hash(&token);
    match state.lookups.token_user(&hash).await? {
        Some((user, expires_at)) => Ok(AuthUser {
            user,
            token_hash: hash,
            expires_at,
        }),
        None => Err(Error::Unauthorized(
            "invalid, expired or revoked token".into(),
        )),
    }
}

impl FromRequest for AuthUser {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| Error::Internal("no app state".into()))?;
            authenticate(&state, token).await
        })
    }
}
