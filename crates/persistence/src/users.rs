//! Accounts and bearer tokens.

use crate::entity::{auth_token, user};
use crate::{Error, Result, Store};
use chrono::{DateTime, SubsecRound, Utc};
use confab_protocol::{UserId, UserRef};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use std::collections::HashMap;

/// What login needs to check a password.
#[derive(Clone, Debug)]
pub struct UserAuth {
    /// The user.
    pub user: UserRef,
    /// Their argon2 PHC hash.
    pub password_hash: String,
}

pub(crate) fn to_ref(m: user::Model) -> UserRef {
    UserRef {
        id: UserId(m.id),
        username: m.username,
    }
}

impl Store {
    /// Register a user; `Conflict` when the name (case-insensitively) is taken.
    pub async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserRef> {
        let id = UserId::new();
        let row = user::ActiveModel {
            id: Set(id.0),
            username: Set(username.to_owned()),
            username_lower: Set(username.to_lowercase()),
            password_hash: Set(password_hash.to_owned()),
            created_at: Set(Utc::now().trunc_subsecs(6)),
        };
        user::Entity::insert(row).exec(&self.db).await?;
        Ok(UserRef {
            id,
            username: username.to_owned(),
        })
    }

    /// The user and password hash for a login attempt.
    pub async fn user_for_login(&self, username: &str) -> Result<Option<UserAuth>> {
        let found = user::Entity::find()
            .filter(user::Column::UsernameLower.eq(username.to_lowercase()))
            .one(&self.db)
            .await?;
        Ok(found.map(|m| UserAuth {
            password_hash: m.password_hash.clone(),
            user: to_ref(m),
        }))
    }

    /// The users with these ids that exist (in no particular order).
    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRef>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = user::Entity::find()
            .filter(user::Column::Id.is_in(ids.iter().map(|u| u.0)))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(to_ref).collect())
    }

    /// Case-insensitive username prefix search, excluding `exclude`, alphabetical.
    pub async fn search_users(
        &self,
        prefix: &str,
        exclude: UserId,
        limit: u64,
    ) -> Result<Vec<UserRef>> {
        // Escape LIKE wildcards so a `%` in the query matches a literal `%`.
        let escaped: String = prefix
            .to_lowercase()
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let rows = user::Entity::find()
            .filter(
                Expr::col(user::Column::UsernameLower)
                    .like(sea_orm::sea_query::LikeExpr::new(format!("{escaped}%")).escape('\\')),
            )
            .filter(user::Column::Id.ne(exclude.0))
            .order_by_asc(user::Column::UsernameLower)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(to_ref).collect())
    }

    /// Store a new token (by hash).
    pub async fn insert_token(
        &self,
        token_hash: &str,
        user_id: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let row = auth_token::ActiveModel {
            token_hash: Set(token_hash.to_owned()),
            user_id: Set(user_id.0),
            created_at: Set(Utc::now().trunc_subsecs(6)),
            expires_at: Set(expires_at.trunc_subsecs(6)),
            revoked_at: Set(None),
        };
        auth_token::Entity::insert(row).exec(&self.db).await?;
        Ok(())
    }

    /// The user a token belongs to, if it exists, is not revoked and has not expired, with the
    /// token's expiry.
    pub async fn token_user(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(UserRef, DateTime<Utc>)>> {
        // One query shape for one token or many: the gateway batches concurrent lookups
        // through `token_users`; this serves a failed batch's retries.
        Ok(self
            .token_users(&[token_hash.to_owned()], now)
            .await?
            .remove(token_hash))
    }

    /// [`Store::token_user`] for many tokens in one round trip (concurrent connects share it):
    /// the live ones, by hash.
    pub async fn token_users(
        &self,
        token_hashes: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, (UserRef, DateTime<Utc>)>> {
        if token_hashes.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, uuid::Uuid, String, DateTime<Utc>)> = auth_token::Entity::find()
            .select_only()
            .column_as(auth_token::Column::TokenHash, "token_hash")
            .column_as(user::Column::Id, "id")
            .column_as(user::Column::Username, "username")
            .column_as(auth_token::Column::ExpiresAt, "expires_at")
            .join(
                sea_orm::JoinType::InnerJoin,
                auth_token::Entity::belongs_to(user::Entity)
                    .from(auth_token::Column::UserId)
                    .to(user::Column::Id)
                    .into(),
            )
            .filter(auth_token::Column::TokenHash.is_in(token_hashes.iter().cloned()))
            .filter(auth_token::Column::RevokedAt.is_null())
            .filter(auth_token::Column::ExpiresAt.gt(now))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(hash, id, username, expires_at)| {
                let user = UserRef {
                    id: UserId(id),
                    username,
                };
                (hash, (user, expires_at))
            })
            .collect())
    }

    /// Revoke a token (log out). `NotFound` when there is no such live token.
    pub async fn revoke_token(&self, token_hash: &str) -> Result<()> {
        let res = auth_token::Entity::update_many()
            .col_expr(
                auth_token::Column::RevokedAt,
                Expr::value(Utc::now().trunc_subsecs(6)),
            )
            .filter(auth_token::Column::TokenHash.eq(token_hash))
            .filter(auth_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        if res.rows_affected == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }
}
