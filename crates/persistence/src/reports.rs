//! Reports: a member flags a message with a reason; moderators read the `reports` table.

use crate::entity::{message, report, thread_member};
use crate::{Result, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::api::Report;
use confab_protocol::{MessageId, UserId};
use sea_orm::{ActiveValue::Set, EntityTrait};

impl Store {
    /// Store a report of a message by a member of its thread. `None` when the message does not
    /// exist or the reporter is not a member of its thread.
    pub async fn report_message(
        &self,
        id: MessageId,
        reporter: UserId,
        reason: &str,
    ) -> Result<Option<Report>> {
        let Some(m) = message::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(None);
        };
        let member = thread_member::Entity::find_by_id((m.thread_id, reporter.0))
            .one(&self.db)
            .await?
            .is_some();
        if !member {
            return Ok(None);
        }
        let report_id = uuid::Uuid::now_v7();
        let now = Utc::now().trunc_subsecs(6);
        report::Entity::insert(report::ActiveModel {
            id: Set(report_id),
            message_id: Set(id.0),
            reporter_id: Set(reporter.0),
            reason: Set(reason.to_owned()),
            created_at: Set(now),
        })
        .exec(&self.db)
        .await?;
        Ok(Some(Report {
            id: report_id,
            message_id: id,
            created_at: now,
        }))
    }
}
