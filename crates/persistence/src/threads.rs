//! Threads and membership. Postgres (or SQLite) is the source of truth for membership; the
//! gateway mirrors it into Redis for fast reads on every node.

use crate::entity::{thread, thread_member, user};
use crate::users::to_ref;
use crate::{Error, Result, Store};
use chrono::{DateTime, SubsecRound, Utc};
use confab_protocol::{Thread, ThreadId, ThreadKind, UserId, UserRef};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, JoinType, QueryFilter, QuerySelect, RelationDef,
    TransactionTrait,
};
use std::collections::HashMap;

fn direct_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

fn kind_of(s: &str) -> ThreadKind {
    if s == "direct" {
        ThreadKind::Direct
    } else {
        ThreadKind::Group
    }
}

/// Join `thread_members.user_id = users.id` (no SeaORM relations are declared on purpose).
fn member_user_join() -> RelationDef {
    thread_member::Entity::belongs_to(user::Entity)
        .from(thread_member::Column::UserId)
        .to(user::Column::Id)
        .into()
}

impl Store {
    /// The direct thread between `a` and `b`, created if needed. Returns `(thread, created)`.
    pub async fn create_direct_thread(&self, a: UserId, b: UserId) -> Result<(Thread, bool)> {
        let key = direct_key(a, b);
        if let Some(t) = self.find_direct(&key).await? {
            return Ok((self.thread_view(ThreadId(t.id)).await?, false));
        }
        let now = Utc::now().trunc_subsecs(6);
        let id = ThreadId::new();
        let txn = self.db.begin().await?;
        let row = thread::ActiveModel {
            id: Set(id.0),
            kind: Set("direct".into()),
            name: Set(None),
            public: Set(false),
            direct_key: Set(Some(key.clone())),
            last_seq: Set(0),
            last_activity_at: Set(now),
            created_at: Set(now),
            created_by: Set(a.0),
            last_change: Set(0),
        };
        match thread::Entity::insert(row)
            .exec(&txn)
            .await
            .map_err(Error::from)
        {
            Ok(_) => {}
            Err(Error::Conflict(_)) => {
                // Two creators raced; the other one won. Return its thread.
                drop(txn);
                let t = self.find_direct(&key).await?.ok_or(Error::NotFound)?;
                return Ok((self.thread_view(ThreadId(t.id)).await?, false));
            }
            Err(e) => return Err(e),
        }
        let mut members = vec![a];
        if b != a {
            members.push(b);
        }
        insert_members(&txn, id, &members, now).await?;
        txn.commit().await?;
        Ok((self.thread_view(id).await?, true))
    }

    async fn find_direct(&self, key: &str) -> Result<Option<thread::Model>> {
        Ok(thread::Entity::find()
            .filter(thread::Column::DirectKey.eq(key))
            .one(&self.db)
            .await?)
    }

    /// Create a named group thread with `creator` and `members`.
    pub async fn create_group_thread(
        &self,
        creator: UserId,
        members: &[UserId],
        name: &str,
        public: bool,
    ) -> Result<Thread> {
        let now = Utc::now().trunc_subsecs(6);
        let id = ThreadId::new();
        let mut all = vec![creator];
        for m in members {
            if !all.contains(m) {
                all.push(*m);
            }
        }
        let txn = self.db.begin().await?;
        thread::Entity::insert(thread::ActiveModel {
            id: Set(id.0),
            kind: Set("group".into()),
            name: Set(Some(name.to_owned())),
            public: Set(public),
            direct_key: Set(None),
            last_seq: Set(0),
            last_activity_at: Set(now),
            created_at: Set(now),
            created_by: Set(creator.0),
            last_change: Set(0),
        })
        .exec(&txn)
        .await?;
        insert_members(&txn, id, &all, now).await?;
        txn.commit().await?;
        self.thread_view(id).await
    }

    /// A thread with its members; `NotFound` when it does not exist.
    pub async fn thread_view(&self, id: ThreadId) -> Result<Thread> {
        let t = thread::Entity::find_by_id(id.0)
            .one(&self.db)
            .await?
            .ok_or(Error::NotFound)?;
        let members = self.thread_members(id).await?;
        Ok(Thread {
            id,
            name: t.name,
            kind: kind_of(&t.kind),
            public: t.public,
            members,
            created_at: t.created_at,
            last_seq: t.last_seq,
            last_change: t.last_change,
        })
    }

    /// The members of a thread with their usernames.
    pub async fn thread_members(&self, id: ThreadId) -> Result<Vec<UserRef>> {
        let rows = user::Entity::find()
            .join_rev(JoinType::InnerJoin, member_user_join())
            .filter(thread_member::Column::ThreadId.eq(id.0))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(to_ref).collect())
    }

    /// The member ids of a thread.
    pub async fn member_ids(&self, id: ThreadId) -> Result<Vec<UserId>> {
        let rows: Vec<uuid::Uuid> = thread_member::Entity::find()
            .select_only()
            .column(thread_member::Column::UserId)
            .filter(thread_member::Column::ThreadId.eq(id.0))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(UserId).collect())
    }

    /// Whether `user` is a member of `thread`.
    pub async fn is_member(&self, thread: ThreadId, user: UserId) -> Result<bool> {
        Ok(thread_member::Entity::find_by_id((thread.0, user.0))
            .one(&self.db)
            .await?
            .is_some())
    }

    /// The ids of every thread `user` belongs to.
    pub async fn user_thread_ids(&self, user: UserId) -> Result<Vec<ThreadId>> {
        let rows: Vec<uuid::Uuid> = thread_member::Entity::find()
            .select_only()
            .column(thread_member::Column::ThreadId)
            .filter(thread_member::Column::UserId.eq(user.0))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(ThreadId).collect())
    }

    /// [`Store::user_thread_ids`] for many users in one round trip (concurrent connects share
    /// it). Every user asked for has an entry, empty when they are in no thread.
    pub async fn users_thread_ids(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, Vec<ThreadId>>> {
        let mut out: HashMap<UserId, Vec<ThreadId>> =
            users.iter().map(|u| (*u, Vec::new())).collect();
        for chunk in users.chunks(500) {
            let rows: Vec<(uuid::Uuid, uuid::Uuid)> = thread_member::Entity::find()
                .select_only()
                .column(thread_member::Column::UserId)
                .column(thread_member::Column::ThreadId)
                .filter(thread_member::Column::UserId.is_in(chunk.iter().map(|u| u.0)))
                .into_tuple()
                .all(&self.db)
                .await?;
            for (user, thread) in rows {
                out.entry(UserId(user)).or_default().push(ThreadId(thread));
            }
        }
        Ok(out)
    }

    /// Those of `candidates` who share at least one thread with `user` (for presence queries).
    pub async fn users_sharing_a_thread(
        &self,
        user: UserId,
        candidates: &[UserId],
    ) -> Result<Vec<UserId>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mine = sea_orm::sea_query::Query::select()
            .column(thread_member::Column::ThreadId)
            .from(thread_member::Entity)
            .and_where(thread_member::Column::UserId.eq(user.0))
            .to_owned();
        let rows: Vec<uuid::Uuid> = thread_member::Entity::find()
            .select_only()
            .column(thread_member::Column::UserId)
            .distinct()
            .filter(thread_member::Column::UserId.is_in(candidates.iter().map(|u| u.0)))
            .filter(thread_member::Column::ThreadId.in_subquery(mine))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(UserId).collect())
    }

    /// Add users to a group thread; returns those who were not members yet, and the thread's
    /// `last_seq` at that moment (they receive what comes after).
    pub async fn add_members(
        &self,
        thread: ThreadId,
        users: &[UserId],
    ) -> Result<(Vec<UserRef>, i64)> {
        let now = Utc::now().trunc_subsecs(6);
        let t = thread::Entity::find_by_id(thread.0)
            .one(&self.db)
            .await?
            .ok_or(Error::NotFound)?;
        let existing = self.member_ids(thread).await?;
        let mut new: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|u| !existing.contains(u))
            .collect();
        new.sort();
        new.dedup();
        let known = self.users_by_ids(&new).await?;
        if known.len() != new.len() {
            // Someone asked to add a user that does not exist.
            return Err(Error::NotFound);
        }
        let ids: Vec<UserId> = known.iter().map(|u| u.id).collect();
        if !ids.is_empty() {
            let txn = self.db.begin().await?;
            insert_members(&txn, thread, &ids, now).await?;
            txn.commit().await?;
        }
        Ok((known, t.last_seq))
    }

    /// Remove a member; `NotFound` when they were not one.
    pub async fn remove_member(&self, thread: ThreadId, user: UserId) -> Result<()> {
        let res = thread_member::Entity::delete_by_id((thread.0, user.0))
            .exec(&self.db)
            .await?;
        if res.rows_affected == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    /// `(thread, last_seq)` for each existing thread in `ids`.
    pub async fn thread_heads(&self, ids: &[ThreadId]) -> Result<Vec<(ThreadId, i64)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(ids.len());
        // Bounded IN lists keep statements small on both backends.
        for chunk in ids.chunks(500) {
            let rows: Vec<(uuid::Uuid, i64)> = thread::Entity::find()
                .select_only()
                .column(thread::Column::Id)
                .column(thread::Column::LastSeq)
                .filter(thread::Column::Id.is_in(chunk.iter().map(|t| t.0)))
                .into_tuple()
                .all(&self.db)
                .await?;
            out.extend(rows.into_iter().map(|(id, seq)| (ThreadId(id), seq)));
        }
        Ok(out)
    }

    /// `(thread, last_seq)` for the threads in `ids` that `user` is a member of — the check
    /// that makes a stale membership mirror harmless.
    pub async fn member_thread_heads(
        &self,
        user: UserId,
        ids: &[ThreadId],
    ) -> Result<Vec<(ThreadId, i64)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let rows: Vec<(uuid::Uuid, i64)> = thread::Entity::find()
                .select_only()
                .column(thread::Column::Id)
                .column(thread::Column::LastSeq)
                .join_rev(
                    JoinType::InnerJoin,
                    thread_member::Entity::belongs_to(thread::Entity)
                        .from(thread_member::Column::ThreadId)
                        .to(thread::Column::Id)
                        .into(),
                )
                .filter(thread_member::Column::UserId.eq(user.0))
                .filter(thread::Column::Id.is_in(chunk.iter().map(|t| t.0)))
                .into_tuple()
                .all(&self.db)
                .await?;
            out.extend(rows.into_iter().map(|(id, seq)| (ThreadId(id), seq)));
        }
        Ok(out)
    }

    /// The raw thread row.
    pub async fn thread_row(&self, id: ThreadId) -> Result<thread::Model> {
        thread::Entity::find_by_id(id.0)
            .one(&self.db)
            .await?
            .ok_or(Error::NotFound)
    }
}

async fn insert_members<C: sea_orm::ConnectionTrait>(
    conn: &C,
    thread: ThreadId,
    users: &[UserId],
    now: DateTime<Utc>,
) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let rows = users.iter().map(|u| thread_member::ActiveModel {
        thread_id: Set(thread.0),
        user_id: Set(u.0),
        joined_at: Set(now),
        last_read_seq: Set(0),
    });
    thread_member::Entity::insert_many(rows).exec(conn).await?;
    Ok(())
}
