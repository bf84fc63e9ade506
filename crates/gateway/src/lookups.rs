//! The reads every connect makes — token, the user's threads, thread heads — batched across
//! concurrent connects (see [`crate::coalesce`]). On SQLite too: its one connection serves one
//! statement at a time, so a crowd of connects queued there statement by statement (measured,
//! `confab-bench idle` on one embedded node, 19,000 connects: 2,121/s unbatched, 7,527/s
//! batched). A batch that fails is retried alone, so each caller still gets its own typed
//! error. Presence reads the user's threads here too: after a mass
//! disconnect every offline settles at once, and one query each would take the whole pool.
//!
//! Counted in `confab_db_lookups_total` (keys asked) and `confab_db_lookup_queries_total`
//! (queries made), by kind: their ratio is how much the batching saves.

use crate::coalesce::Coalescer;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use confab_persistence::{Result, Store};
use confab_protocol::{ThreadId, UserId, UserRef};
use futures_util::future::join_all;
use prometheus::IntCounter;

type TokenRow = (UserRef, DateTime<Utc>);

struct Batched {
    tokens: Coalescer<String, TokenRow>,
    threads: Coalescer<UserId, Vec<ThreadId>>,
    heads: Coalescer<ThreadId, i64>,
}

/// Keys asked and queries made for one kind of lookup.
#[derive(Clone)]
struct Counted {
    keys: IntCounter,
    queries: IntCounter,
}

impl Counted {
    fn new(metrics: &Metrics, kind: &str) -> Self {
        Self {
            keys: metrics.db_lookups.with_label_values(&[kind]),
            queries: metrics.db_lookup_queries.with_label_values(&[kind]),
        }
    }

    fn query(&self, keys: usize) {
        self.queries.inc();
        self.keys.inc_by(keys as u64);
    }
}

/// The batched reads of connects and presence (see the module docs).
pub struct Lookups {
    store: Store,
    batched: Batched,
    tokens: Counted,
    threads: Counted,
    heads: Counted,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups").finish_non_exhaustive()
    }
}

impl Lookups {
    /// Batched lookups. Must be called inside a tokio runtime (it starts the batching
    /// tasks).
    pub fn new(store: Store, metrics: &Metrics) -> Self {
        let counted = [
            Counted::new(metrics, "token"),
            Counted::new(metrics, "threads"),
            Counted::new(metrics, "heads"),
        ];
        let batched = {
            let (s, n) = (store.clone(), counted[0].clone());
            let tokens = Coalescer::new(move |hashes: Vec<String>| {
                let s = s.clone();
                n.query(hashes.len());
                async move { s.token_users(&hashes, Utc::now()).await }
            });
            let (s, n) = (store.clone(), counted[1].clone());
            let threads = Coalescer::new(move |users: Vec<UserId>| {
                let s = s.clone();
                n.query(users.len());
                async move { s.users_thread_ids(&users).await }
            });
            let (s, n) = (store.clone(), counted[2].clone());
            let heads = Coalescer::new(move |ids: Vec<ThreadId>| {
                let s = s.clone();
                n.query(ids.len());
                async move {
                    Ok::<_, confab_persistence::Error>(
                        s.thread_heads(&ids).await?.into_iter().collect(),
                    )
                }
            });
            Batched {
                tokens,
                threads,
                heads,
            }
        };
        let [tokens, threads, heads] = counted;
        Self {
            store,
            batched,
            tokens,
            threads,
            heads,
        }
    }

    /// The store these read from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The live token with this hash: its user and expiry.
    pub async fn token_user(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        if let Ok(found) = self.batched.tokens.get(token_hash.to_owned()).await {
            return Ok(found);
        }
        self.tokens.query(1);
        self.store.token_user(token_hash, Utc::now()).await
    }

    /// The threads `user` is a member of (a connect, and presence building an event).
    pub async fn user_thread_ids(&self, user: UserId) -> Result<Vec<ThreadId>> {
        if let Ok(found) = self.batched.threads.get(user).await {
            return Ok(found.unwrap_or_default());
        }
        self.threads.query(1);
        self.store.user_thread_ids(user).await
    }

    /// `(thread, last_seq)` of the threads in `ids` that exist.
    pub async fn thread_heads(&self, ids: &[ThreadId]) -> Result<Vec<(ThreadId, i64)>> {
        let found = join_all(ids.iter().map(|t| self.batched.heads.get(*t))).await;
        if found.iter().all(Result::is_ok) {
            return Ok(ids
                .iter()
                .zip(found)
                .filter_map(|(t, r)| Some((*t, r.ok()??)))
                .collect());
        }
        self.heads.query(ids.len());
        self.store.thread_heads(ids).await
    }
}
