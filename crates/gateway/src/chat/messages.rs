//! Changing stored messages: edits, deletes, reactions and reports. Each is checked (members
//! only; edits and deletes by the sender only), stored, then announced on the thread's channel,
//! so every member's sessions on every node see it. Nothing here touches sockets.

use super::Chat;
use crate::error::{Error, Result};
use confab_persistence::{EditOutcome, ReactOutcome};
use confab_protocol::api::Report;
use confab_protocol::{Message, MessageId, ServerFrame, UserId};

/// The width of the `reactions.emoji` column: no setting can allow more.
const EMOJI_COLUMN_BYTES: usize = 32;
/// The width of the `reports.reason` column: no setting can allow more.
const REASON_COLUMN_CHARS: usize = 500;

/// The emoji rule: 1 to `max_bytes` bytes (never more than 32) with no ASCII character at all
/// (so no letters, digits, punctuation, spaces or control characters), and no letter, digit,
/// whitespace or control character of any script. Emoji, including ZWJ sequences, skin tones,
/// variation selectors and flags, pass; words do not.
pub fn check_emoji(emoji: &str, max_bytes: usize) -> Result<()> {
    let max = max_bytes.min(EMOJI_COLUMN_BYTES);
    if emoji.is_empty() || emoji.len() > max {
        return Err(Error::BadRequest(format!("emoji must be 1 to {max} bytes")));
    }
    let bad = |c: char| c.is_ascii() || c.is_alphanumeric() || c.is_whitespace() || c.is_control();
    if emoji.chars().any(bad) {
        return Err(Error::BadRequest(
            "emoji must be an emoji: no letters, digits, spaces or ASCII characters".into(),
        ));
    }
    Ok(())
}

fn edit_refusal(outcome: EditOutcome) -> Error {
    match outcome {
        EditOutcome::Forbidden => Error::Forbidden("only the sender may change a message".into()),
        EditOutcome::Deleted => Error::BadRequest("the message is deleted".into()),
        // A missing message and a stranger's message look the same, so non-members cannot
        // probe which message ids exist.
        EditOutcome::NotFound | EditOutcome::Done(..) => Error::NotMember,
    }
}

impl Chat {
    /// Replace the body of the caller's own message (same rules as a send), then announce
    /// `message_edited`. Editing a deleted message is refused with `bad_request`.
    pub async fn edit(&self, caller: UserId, id: MessageId, body: &str) -> Result<Message> {
        self.check_body(body)?;
        match self.store.edit_message(id, caller, body).await? {
            EditOutcome::Done(msg, change) => {
                if let Some(edited_at) = msg.edited_at {
                    self.publish_event(
                        msg.thread_id,
                        None,
                        &ServerFrame::MessageEdited {
                            thread_id: msg.thread_id,
                            id: msg.id,
                            seq: msg.seq,
                            body: msg.body.clone(),
                            edited_at,
                            change_seq: Some(change),
                        },
                    );
                }
                Ok(msg)
            }
            other => Err(edit_refusal(other)),
        }
    }

    /// Delete the caller's own message, then announce `message_deleted`. Deleting it again
    /// succeeds and announces nothing.
    pub async fn delete(&self, caller: UserId, id: MessageId) -> Result<()> {
        match self.store.delete_message(id, caller).await? {
            EditOutcome::Done(msg, change) => {
                self.publish_event(
                    msg.thread_id,
                    None,
                    &ServerFrame::MessageDeleted {
                        thread_id: msg.thread_id,
                        id: msg.id,
                        seq: msg.seq,
                        body: msg.body,
                        deleted: true,
                        change_seq: Some(change),
                    },
                );
                Ok(())
            }
            EditOutcome::Deleted => Ok(()),
            other => Err(edit_refusal(other)),
        }
    }

    /// Add (`add`) or remove the caller's reaction. Idempotent: adding an existing reaction or
    /// removing a missing one succeeds and announces nothing. Returns the emoji's new count.
    pub async fn react(
        &self,
        caller: UserId,
        id: MessageId,
        emoji: &str,
        add: bool,
    ) -> Result<i64> {
        check_emoji(emoji, self.limits.max_emoji_bytes)?;
        match self.store.set_reaction(id, caller, emoji, add).await? {
            ReactOutcome::Done {
                thread_id,
                changed,
                count,
                change_seq,
            } => {
                if changed {
                    self.publish_event(
                        thread_id,
                        None,
                        &ServerFrame::Reaction {
                            thread_id,
                            message_id: id,
                            user_id: caller,
                            emoji: emoji.to_owned(),
                            added: add,
                            count,
                            change_seq,
                        },
                    );
                }
                Ok(count)
            }
            ReactOutcome::Deleted => Err(Error::BadRequest("the message is deleted".into())),
            ReactOutcome::NotFound => Err(Error::NotMember),
        }
    }

    /// Store a member's report of a message for moderators (nothing is announced).
    pub async fn report(&self, caller: UserId, id: MessageId, reason: &str) -> Result<Report> {
        let max = self.limits.max_report_chars.min(REASON_COLUMN_CHARS);
        if reason.trim().is_empty() {
            return Err(Error::BadRequest("reason must not be empty".into()));
        }
        super::check_no_nul("reason", reason)?;
        let n = reason.chars().count();
        if n > max {
            return Err(Error::TooLarge(format!(
                "reason has {n} characters; the limit is {max}"
            )));
        }
        self.store
            .report_message(id, caller, reason)
            .await?
            .ok_or(Error::NotMember)
    }
}

#[cfg(test)]
mod tests {
    use super::check_emoji;

    #[test]
    fn emoji_rule_accepts_emoji_and_refuses_words() {
        for ok in ["👍", "❤️", "🎉", "👩‍👩‍👧‍👦", "👍🏽", "🇫🇷", "😂"]
        {
            assert!(check_emoji(ok, 32).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "ok", "1", " ", "👍 ", ":)", "\u{7}", "日本", "é", "👍a",
        ] {
            assert!(check_emoji(bad, 32).is_err(), "{bad:?}");
        }
        assert!(check_emoji(&"👍".repeat(9), 32).is_err(), "36 bytes");
        assert!(check_emoji(&"👍".repeat(8), 64).is_ok(), "32 bytes");
        assert!(
            check_emoji(&"👍".repeat(9), 64).is_err(),
            "the column caps it"
        );
    }
}
