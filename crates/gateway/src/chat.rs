//! The chat service: every state change a client can ask for, validated, stored, then announced.
//! Sessions and HTTP routes call it; it calls the store (source of truth), the directory
//! (membership mirror) and the broker (fan-out). It never touches sockets.

use crate::broker::Broker;
use crate::config::LimitSettings;
use crate::directory::Directory;
use crate::envelope::{ControlEvent, Envelope};
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::lookups::Lookups;
use crate::metrics::Metrics;
use confab_persistence::{SendBatcher, SendOutcome, Store};
use confab_protocol::api::CreateThread;
use confab_protocol::{Message, ServerFrame, Thread, ThreadId, UserId, UserRef};
use std::sync::Arc;
use std::time::Instant;

mod control;
mod messages;
mod reading;
mod rooms;

/// Refuse text holding a NUL character. Postgres cannot store one in a text column (the write
/// would fail as a server fault after the checks passed), and the embedded store must refuse
/// exactly what Postgres refuses, so the rule is checked here, before either sees it.
pub fn check_no_nul(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::BadRequest(format!(
            "{what} must not contain NUL (\\u0000) characters"
        )));
    }
    Ok(())
}

/// Announce a stored message on its thread's channel: serialized here, once for every node.
/// The send batcher calls it right after each commit ([`confab_persistence::OnStored`]).
pub fn publish_stored(broker: &dyn Broker, keys: &Keys, msg: &Message) {
    broker.publish(keys.thread_channel(msg.thread_id), Envelope::message(msg));
}

/// Cheap to clone; shared by every session and route of a node.
#[derive(Clone)]
pub struct Chat {
    /// The database.
    pub store: Store,
    lookups: Arc<Lookups>,
    /// Group commit of sends; its writer publishes each stored message.
    batcher: SendBatcher,
    broker: Arc<dyn Broker>,
    directory: Arc<dyn Directory>,
    keys: Keys,
    metrics: Metrics,
    limits: Arc<LimitSettings>,
    typing: Arc<reading::TypingGate>,
    /// Control events waiting for Redis (see `control`).
    backlog: Arc<control::Backlog>,
}

impl Chat {
    /// Assemble the service.
    pub fn new(
        lookups: Arc<Lookups>,
        batcher: SendBatcher,
        broker: Arc<dyn Broker>,
        directory: Arc<dyn Directory>,
        keys: Keys,
        metrics: Metrics,
        limits: Arc<LimitSettings>,
    ) -> Self {
        Self {
            store: lookups.store().clone(),
            lookups,
            batcher,
            broker,
            directory,
            keys,
            metrics,
            limits,
            typing: Arc::default(),
            backlog: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &LimitSettings {
        &self.limits
    }

    /// Validate, store (ack-able only after commit), then publish a message.
    /// Returns the message and whether it was a retry of an already stored one.
    /// Takes the strings by value: the batcher keeps them until the commit, so a session's
    /// send hands over what it decoded instead of copying it.
    pub async fn send(
        &self,
        sender: UserId,
        thread: ThreadId,
        client_msg_id: String,
        body: String,
    ) -> Result<(Message, bool)> {
        if client_msg_id.is_empty() || client_msg_id.chars().count() > self.limits.max_id_chars {
            return Err(Error::BadRequest(format!(
                "client_msg_id must be 1 to {} characters",
                self.limits.max_id_chars
            )));
        }
        check_no_nul("client_msg_id", &client_msg_id)?;
        self.check_body(&body)?;
        let started = Instant::now();
        let outcome = self
            .batcher
            .send(thread, sender, client_msg_id, body)
            .await?;
        self.metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            SendOutcome::Stored(msg) => {
                self.metrics.messages_stored.inc();
                // The batcher's writer published it already, right after the commit.
                Ok((msg, false))
            }
            SendOutcome::Duplicate(msg) => Ok((msg, true)),
            SendOutcome::KeyReused => Err(Error::Conflict(
                "client_msg_id was already used for a message in another thread".into(),
            )),
            SendOutcome::NotMember => Err(Error::NotMember),
        }
    }

    /// Body rules shared by send and edit.
    pub fn check_body(&self, body: &str) -> Result<()> {
        if body.trim().is_empty() {
            return Err(Error::BadRequest("body must not be empty".into()));
        }
        check_no_nul("body", body)?;
        let n = body.chars().count();
        if n > self.limits.max_body_chars {
            return Err(Error::TooLarge(format!(
                "body has {n} characters; the limit is {}",
                self.limits.max_body_chars
            )));
        }
        Ok(())
    }

    /// Create a direct thread (no name, one other member) or a group thread (a name).
    /// Returns the thread and whether it was created now.
    pub async fn create_thread(
        &self,
        caller: &UserRef,
        req: CreateThread,
    ) -> Result<(Thread, bool)> {
        let mut others: Vec<UserId> = req
            .member_ids
            .iter()
            .copied()
            .filter(|u| *u != caller.id)
            .collect();
        others.sort();
        others.dedup();
        if others.len() + 1 > self.limits.max_members {
            return Err(Error::TooLarge(format!(
                "a thread has at most {} members",
                self.limits.max_members
            )));
        }
        let known = self.store.users_by_ids(&others).await?;
        if known.len() != others.len() {
            return Err(Error::NotFound("user"));
        }
        let (thread, created) = match req.name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => {
                if name.chars().count() > 100 {
                    return Err(Error::TooLarge(
                        "a thread name has at most 100 characters".into(),
                    ));
                }
                check_no_nul("name", name)?;
                let t = self
                    .store
                    .create_group_thread(caller.id, &others, name, req.public)
                    .await?;
                (t, true)
            }
            Some(_) => return Err(Error::BadRequest("name must not be blank".into())),
            None => {
                if req.public {
                    return Err(Error::BadRequest("only named rooms can be public".into()));
                }
                let [other] = others.as_slice() else {
                    return Err(Error::BadRequest(
                        "a direct thread needs exactly one other member; give a name for a group"
                            .into(),
                    ));
                };
                self.store.create_direct_thread(caller.id, *other).await?
            }
        };
        if created {
            let members: Vec<UserId> = thread.members.iter().map(|m| m.id).collect();
            self.announce_joined(&thread, &members, 0).await;
        }
        Ok((thread, created))
    }

    /// Add users to a group thread the caller is a member of.
    pub async fn add_members(
        &self,
        caller: UserId,
        thread: ThreadId,
        users: &[UserId],
    ) -> Result<Thread> {
        self.require_member(thread, caller).await?;
        let row = self.store.thread_row(thread).await?;
        if row.kind == "direct" {
            return Err(Error::BadRequest(
                "members cannot be added to a direct thread".into(),
            ));
        }
        let current = self.store.member_ids(thread).await?;
        if current.len() + users.len() > self.limits.max_members {
            return Err(Error::TooLarge(format!(
                "a thread has at most {} members",
                self.limits.max_members
            )));
        }
        let (added, last_seq) =
            self.store
                .add_members(thread, users)
                .await
                .map_err(|e| match e {
                    confab_persistence::Error::NotFound => Error::NotFound("user"),
                    other => other.into(),
                })?;
        let view = self.store.thread_view(thread).await?;
        let ids: Vec<UserId> = added.iter().map(|u| u.id).collect();
        if !ids.is_empty() {
            self.announce_joined(&view, &ids, last_seq).await;
            for user in added {
                self.publish_event(
                    thread,
                    None,
                    &ServerFrame::MemberJoined {
                        thread_id: thread,
                        user,
                        last_seq,
                    },
                );
            }
        }
        Ok(view)
    }

    /// Join a public room.
    pub async fn join_public(&self, caller: &UserRef, thread: ThreadId) -> Result<Thread> {
        let row = self.store.thread_row(thread).await.map_err(|e| match e {
            confab_persistence::Error::NotFound => Error::NotFound("room"),
            other => other.into(),
        })?;
        if !row.public {
            // Private rooms are indistinguishable from missing ones to outsiders.
            return Err(Error::NotFound("room"));
        }
        let (added, last_seq) = self.store.add_members(thread, &[caller.id]).await?;
        let view = self.store.thread_view(thread).await?;
        if !added.is_empty() {
            self.announce_joined(&view, &[caller.id], last_seq).await;
            self.publish_event(
                thread,
                None,
                &ServerFrame::MemberJoined {
                    thread_id: thread,
                    user: caller.clone(),
                    last_seq,
                },
            );
        }
        Ok(view)
    }

    /// Leave a group thread.
    pub async fn leave(&self, caller: UserId, thread: ThreadId) -> Result<()> {
        self.require_member(thread, caller).await?;
        let row = self.store.thread_row(thread).await?;
        if row.kind == "direct" {
            return Err(Error::BadRequest("a direct thread cannot be left".into()));
        }
        // Delivery to the leaver stops *before* the removal is stored. Announced after it, a
        // message stored right after the removal could reach a node ahead of the announcement
        // (another node publishes it; Redis orders the two by arrival) and be handed to the
        // leaver's sessions there — a message of a thread they had left. Announced first (and
        // confirmed by Redis), everything stored after the removal is published after the
        // announcement, and every node hears the two in that order.
        //
        // Unannounced, the removal would leave the leaver's sessions receiving the thread, so
        // with Redis unreachable the leave is refused (503) and changes nothing. A `leaving`
        // Redis did not confirm in time may still go out: the refusal then also queues a
        // resync of the leaver's sessions behind it.
        self.announce_or_refuse(
            &ControlEvent::Leaving {
                thread,
                user: caller,
            },
            Some(&ControlEvent::Resync {
                user: caller,
                thread,
            }),
        )
        .await?;
        match self.store.remove_member(thread, caller).await {
            Ok(()) => {}
            // Already out: a concurrent leave of theirs removed them and announces it.
            Err(e @ confab_persistence::Error::NotFound) => return Err(e.into()),
            Err(e) => {
                // Still a member, but their sessions stopped receiving the thread: they
                // reconnect and resume from their own last `seq`s (nothing lost, nothing twice).
                self.publish_control_confirmed(&ControlEvent::Resync {
                    user: caller,
                    thread,
                })
                .await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.directory.remove_member(thread, caller).await {
            tracing::warn!(error = %e, "directory update failed");
            self.forget_until_done(caller);
        }
        let frame = ServerFrame::MemberLeft {
            thread_id: thread,
            user_id: caller,
        };
        // The leaver's sessions hear they left — and any that started between the first
        // announcement and the removal (they read the thread from the database before it) stop
        // receiving it now; the other members hear it too.
        self.publish_control_confirmed(&ControlEvent::Left {
            thread,
            user: caller,
            frame: frame.to_json(),
        })
        .await;
        self.publish_event(thread, None, &frame);
        Ok(())
    }

    /// The threads of a user, from the source of truth. Sessions use this at connect: a stale
    /// mirror must never let a former member subscribe to a thread.
    pub async fn user_threads(&self, user: UserId) -> Result<Vec<ThreadId>> {
        Ok(self.lookups.user_thread_ids(user).await?)
    }

    /// Write what the source of truth said of `user`'s threads into the membership mirror.
    /// Nothing waits for its answer but the caller, and a failure only leaves the mirror cold,
    /// so a connect runs it beside its subscriptions rather than before them.
    pub async fn warm_mirror(&self, user: UserId, threads: &[ThreadId]) {
        if let Err(e) = self.directory.warm_user(user, threads).await {
            tracing::debug!(error = %e, "directory warm failed");
        }
    }

    /// After a failed mirror write, make the user's mirror entry cold (so the next connect
    /// reads the database), retrying in the background while Redis is unreachable: a mirror
    /// missing a thread would keep the user's new sessions out of it.
    fn forget_until_done(&self, user: UserId) {
        let directory = self.directory.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                if directory.forget_user(user).await.is_ok() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::warn!(%user, "could not invalidate the membership mirror");
        });
    }

    /// `NotMember` unless `user` is a member of `thread`.
    pub async fn require_member(&self, thread: ThreadId, user: UserId) -> Result<()> {
        if self.store.is_member(thread, user).await? {
            Ok(())
        } else {
            Err(Error::NotMember)
        }
    }

    async fn announce_joined(&self, thread: &Thread, users: &[UserId], last_seq: i64) {
        if let Err(e) = self.directory.add_members(thread.id, users).await {
            tracing::warn!(error = %e, "directory update failed");
            for u in users {
                self.forget_until_done(*u);
            }
        }
        let frame = ServerFrame::ThreadCreated {
            thread: thread.clone(),
        };
        self.publish_control_confirmed(&ControlEvent::Joined {
            thread: thread.id,
            users: users.to_vec(),
            last_seq,
            frame: frame.to_json(),
        })
        .await;
    }

    /// Publish a non-message event to a thread's members (optionally not to one user).
    pub fn publish_event(&self, thread: ThreadId, exclude: Option<UserId>, frame: &ServerFrame) {
        self.broker.publish(
            self.keys.thread_channel(thread),
            Envelope::event(exclude, &frame.to_json()),
        );
    }

    /// Publish an event every node hears.
    pub fn publish_control(&self, ev: &ControlEvent) {
        match serde_json::to_vec(ev) {
            Ok(v) => self
                .broker
                .publish(self.keys.control_channel(), bytes::Bytes::from(v)),
            Err(e) => tracing::error!(error = %e, "control event serialization failed"),
        }
    }
}
