//! The thread list ("chat navigation"): a user's threads, most recent activity first, each with
//! its members, last message and the user's unread count. Paged by keyset on
//! `(last_activity_at, id)`, never by OFFSET, so a page costs the same however deep it is.

use crate::entity::{message, thread, thread_member, user};
use crate::messages::to_message;
use crate::{Result, Store};
use chrono::{DateTime, TimeZone, Utc};
use confab_protocol::api::{LastMessage, ThreadListItem};
use confab_protocol::{ThreadId, ThreadKind, UserId, UserRef};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
    RelationDef,
};
use std::collections::HashMap;

/// A position in a list ordered by `(last_activity_at, id)` descending: the next page starts
/// strictly after it. Clients see it as an opaque string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityCursor {
    /// `last_activity_at` of the last item returned.
    pub at: DateTime<Utc>,
    /// Its id.
    pub id: uuid::Uuid,
}

impl ActivityCursor {
    /// The opaque form: 16 hex digits of microseconds then 32 of the id.
    pub fn encode(&self) -> String {
        format!(
            "{:016x}{}",
            self.at.timestamp_micros() as u64,
            self.id.simple()
        )
    }

    /// Parse [`ActivityCursor::encode`]'s output; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() != 48 || !s.is_ascii() {
            return None;
        }
        let micros = u64::from_str_radix(&s[..16], 16).ok()? as i64;
        let at = Utc.timestamp_micros(micros).single()?;
        let id = uuid::Uuid::parse_str(&s[16..]).ok()?;
        Some(Self { at, id })
    }

    /// Rows strictly after this cursor in `(at_col, id_col)` descending order.
    pub(crate) fn after<C: ColumnTrait>(&self, at_col: C, id_col: C) -> Condition {
        Condition::any().add(at_col.lt(self.at)).add(
            Condition::all()
                .add(at_col.eq(self.at))
                .add(id_col.lt(self.id)),
        )
    }
}

/// One keyset page of threads ordered by `(last_activity_at, id)` descending, strictly after
/// `cursor`: fetches one row more than `limit` to know whether another page follows, and
/// returns the cursor of the last row kept when it does. Shared by the thread list and rooms.
pub(crate) async fn activity_page<T: sea_orm::TryGetableMany>(
    db: &sea_orm::DatabaseConnection,
    mut q: sea_orm::Select<thread::Entity>,
    cursor: Option<ActivityCursor>,
    limit: u64,
    key: impl Fn(&T) -> (DateTime<Utc>, uuid::Uuid),
) -> Result<(Vec<T>, Option<ActivityCursor>)> {
    if let Some(c) = cursor {
        q = q.filter(c.after(thread::Column::LastActivityAt, thread::Column::Id));
    }
    let mut rows: Vec<T> = q
        .order_by_desc(thread::Column::LastActivityAt)
        .order_by_desc(thread::Column::Id)
        .limit(limit + 1)
        .into_tuple()
        .all(db)
        .await?;
    let next = if rows.len() as u64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| {
            let (at, id) = key(r);
            ActivityCursor { at, id }
        })
    } else {
        None
    };
    Ok((rows, next))
}

/// One thread row of the page, with the caller's read position and the thread's change
/// counter last.
type PageRow = (
    uuid::Uuid,
    String,
    Option<String>,
    bool,
    i64,
    DateTime<Utc>,
    i64,
    i64,
);

fn member_thread_join() -> RelationDef {
    thread_member::Entity::belongs_to(thread::Entity)
        .from(thread_member::Column::ThreadId)
        .to(thread::Column::Id)
        .into()
}

fn member_user_join() -> RelationDef {
    thread_member::Entity::belongs_to(user::Entity)
        .from(thread_member::Column::UserId)
        .to(user::Column::Id)
        .into()
}

impl Store {
    /// One page of `user`'s threads (at most `limit`), most recent activity first, starting
    /// after `cursor`. Returns the page and the cursor of the next one (`None` on the last).
    pub async fn thread_list(
        &self,
        user: UserId,
        cursor: Option<ActivityCursor>,
        limit: u64,
    ) -> Result<(Vec<ThreadListItem>, Option<ActivityCursor>)> {
        let (rows, next): (Vec<PageRow>, _) = activity_page(
            &self.db,
            Self::thread_rows(user),
            cursor,
            limit,
            |r: &PageRow| (r.5, r.0),
        )
        .await?;
        Ok((self.list_items(user, rows).await?, next))
    }

    /// One of `user`'s threads as its thread-list entry (the same view, for one thread: a
    /// client refreshes that row, or opens a thread from a link); `None` when the user is not
    /// a member of it or it does not exist.
    pub async fn thread_item(
        &self,
        user: UserId,
        thread: ThreadId,
    ) -> Result<Option<ThreadListItem>> {
        let rows: Vec<PageRow> = Self::thread_rows(user)
            .filter(thread::Column::Id.eq(thread.0))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(self.list_items(user, rows).await?.pop())
    }

    /// The threads `user` is a member of, as [`PageRow`]s.
    fn thread_rows(user: UserId) -> sea_orm::Select<thread::Entity> {
        thread::Entity::find()
            .select_only()
            .columns([
                thread::Column::Id,
                thread::Column::Kind,
                thread::Column::Name,
                thread::Column::Public,
                thread::Column::LastSeq,
                thread::Column::LastActivityAt,
            ])
            .column(thread_member::Column::LastReadSeq)
            .column(thread::Column::LastChange)
            .join_rev(JoinType::InnerJoin, member_thread_join())
            .filter(thread_member::Column::UserId.eq(user.0))
    }

    /// The thread-list entries of `rows`: their members, last messages and `user`'s unread
    /// counts, three queries for all of them.
    async fn list_items(&self, user: UserId, rows: Vec<PageRow>) -> Result<Vec<ThreadListItem>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.0).collect();
        let mut members = self.members_of(&ids).await?;
        let mut last = self.last_messages(&rows).await?;
        let unread = self.unread_counts(user, &rows).await?;
        let items = rows
            .into_iter()
            .map(
                |(
                    id,
                    kind,
                    name,
                    public,
                    last_seq,
                    last_activity_at,
                    last_read_seq,
                    last_change,
                )| {
                    ThreadListItem {
                        id: ThreadId(id),
                        name,
                        kind: if kind == "direct" {
                            ThreadKind::Direct
                        } else {
                            ThreadKind::Group
                        },
                        public,
                        members: members.remove(&id).unwrap_or_default(),
                        last_message: last.remove(&id),
                        last_seq,
                        unread_count: unread.get(&id).copied().unwrap_or(0),
                        last_read_seq,
                        last_activity_at,
                        last_change,
                    }
                },
            )
            .collect();
        Ok(items)
    }

    /// The members of several threads, each list sorted by username.
    async fn members_of(&self, ids: &[uuid::Uuid]) -> Result<HashMap<uuid::Uuid, Vec<UserRef>>> {
        let rows: Vec<(uuid::Uuid, uuid::Uuid, String)> = thread_member::Entity::find()
            .select_only()
            .column(thread_member::Column::ThreadId)
            .column(user::Column::Id)
            .column(user::Column::Username)
            .join(JoinType::InnerJoin, member_user_join())
            .filter(thread_member::Column::ThreadId.is_in(ids.iter().copied()))
            .order_by_asc(user::Column::UsernameLower)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut out: HashMap<uuid::Uuid, Vec<UserRef>> = HashMap::new();
        for (thread, id, username) in rows {
            out.entry(thread).or_default().push(UserRef {
                id: UserId(id),
                username,
            });
        }
        Ok(out)
    }

    /// The newest message of each thread that has one (by `(thread_id, seq)`, the unique key).
    async fn last_messages(&self, rows: &[PageRow]) -> Result<HashMap<uuid::Uuid, LastMessage>> {
        let mut cond = Condition::any();
        let mut any = false;
        for r in rows.iter().filter(|r| r.4 > 0) {
            any = true;
            cond = cond.add(
                Condition::all()
                    .add(message::Column::ThreadId.eq(r.0))
                    .add(message::Column::Seq.eq(r.4)),
            );
        }
        if !any {
            return Ok(HashMap::new());
        }
        let msgs = message::Entity::find().filter(cond).all(&self.db).await?;
        Ok(msgs
            .into_iter()
            .map(|m| {
                let m = to_message(m);
                (
                    m.thread_id.0,
                    LastMessage {
                        id: m.id,
                        seq: m.seq,
                        sender_id: m.sender_id,
                        body: m.body,
                        deleted: m.deleted,
                        created_at: m.created_at,
                    },
                )
            })
            .collect())
    }

    /// Per thread: messages from others after the user's read position that are not deleted.
    async fn unread_counts(
        &self,
        user: UserId,
        rows: &[PageRow],
    ) -> Result<HashMap<uuid::Uuid, i64>> {
        let mut ranges = Condition::any();
        let mut any = false;
        for r in rows.iter().filter(|r| r.4 > r.6) {
            any = true;
            ranges = ranges.add(
                Condition::all()
                    .add(message::Column::ThreadId.eq(r.0))
                    .add(message::Column::Seq.gt(r.6)),
            );
        }
        if !any {
            return Ok(HashMap::new());
        }
        let counts: Vec<(uuid::Uuid, i64)> = message::Entity::find()
            .select_only()
            .column(message::Column::ThreadId)
            // count(*), not count(id): `id` is not in the (thread_id, seq) index, and reading
            // it would turn an index-only count into a heap fetch per unread message.
            .column_as(Expr::cust("count(*)"), "n")
            .filter(ranges)
            .filter(message::Column::SenderId.ne(user.0))
            .filter(message::Column::DeletedAt.is_null())
            .group_by(message::Column::ThreadId)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(counts.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = ActivityCursor {
            at: Utc
                .timestamp_micros(1_700_000_000_123_456)
                .single()
                .unwrap_or_default(),
            id: uuid::Uuid::now_v7(),
        };
        assert_eq!(ActivityCursor::decode(&c.encode()), Some(c));
        assert_eq!(ActivityCursor::decode("nope"), None);
        assert_eq!(ActivityCursor::decode(&"z".repeat(48)), None);
    }
}
