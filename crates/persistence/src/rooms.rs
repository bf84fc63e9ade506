//! Public rooms: listing them (keyset-paged by activity, with member counts) and picking a
//! random one a user is not in yet.

use crate::entity::{thread, thread_member};
use crate::thread_list::{activity_page, ActivityCursor};
use crate::{Result, Store};
use chrono::{DateTime, Utc};
use confab_protocol::api::RoomListItem;
use confab_protocol::{ThreadId, UserId};
use sea_orm::sea_query::{Expr, Func, Query};
use sea_orm::{ColumnTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect};
use std::collections::{HashMap, HashSet};

type RoomRow = (uuid::Uuid, Option<String>, DateTime<Utc>, DateTime<Utc>);

impl Store {
    /// One page of public rooms (at most `limit`), most recent activity first, after `cursor`,
    /// with member counts and whether `viewer` is a member.
    pub async fn public_rooms(
        &self,
        viewer: UserId,
        cursor: Option<ActivityCursor>,
        limit: u64,
    ) -> Result<(Vec<RoomListItem>, Option<ActivityCursor>)> {
        let q = thread::Entity::find()
            .select_only()
            .columns([
                thread::Column::Id,
                thread::Column::Name,
                thread::Column::CreatedAt,
                thread::Column::LastActivityAt,
            ])
            .filter(thread::Column::Public.eq(true));
        let (rows, next): (Vec<RoomRow>, _) =
            activity_page(&self.db, q, cursor, limit, |r: &RoomRow| (r.3, r.0)).await?;
        if rows.is_empty() {
            return Ok((Vec::new(), None));
        }
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.0).collect();
        let counts: HashMap<uuid::Uuid, i64> = thread_member::Entity::find()
            .select_only()
            .column(thread_member::Column::ThreadId)
            .column_as(Expr::col(thread_member::Column::UserId).count(), "n")
            .filter(thread_member::Column::ThreadId.is_in(ids.iter().copied()))
            .group_by(thread_member::Column::ThreadId)
            .into_tuple::<(uuid::Uuid, i64)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let joined: HashSet<uuid::Uuid> = thread_member::Entity::find()
            .select_only()
            .column(thread_member::Column::ThreadId)
            .filter(thread_member::Column::UserId.eq(viewer.0))
            .filter(thread_member::Column::ThreadId.is_in(ids.iter().copied()))
            .into_tuple::<uuid::Uuid>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let items = rows
            .into_iter()
            .map(|(id, name, created_at, last_activity_at)| RoomListItem {
                id: ThreadId(id),
                name: name.unwrap_or_default(),
                member_count: counts.get(&id).copied().unwrap_or(0),
                joined: joined.contains(&id),
                created_at,
                last_activity_at,
            })
            .collect();
        Ok((items, next))
    }

    /// A public room `user` is not a member of, chosen at random; `None` when there is none.
    /// `ORDER BY RANDOM()` reads every candidate: fine for thousands of public rooms; past
    /// that, sample by a random key instead.
    pub async fn random_public_room(&self, user: UserId) -> Result<Option<ThreadId>> {
        let mine = Query::select()
            .column(thread_member::Column::ThreadId)
            .from(thread_member::Entity)
            .and_where(thread_member::Column::UserId.eq(user.0))
            .to_owned();
        let id: Option<uuid::Uuid> = thread::Entity::find()
            .select_only()
            .column(thread::Column::Id)
            .filter(thread::Column::Public.eq(true))
            .filter(thread::Column::Id.not_in_subquery(mine))
            .order_by(Expr::expr(Func::random()), Order::Asc)
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(id.map(ThreadId))
    }
}
