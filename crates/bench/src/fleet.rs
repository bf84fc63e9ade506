//! Setting up a benchmark population through the public HTTP API: users registered and logged
//! in (`POST /api/v1/users`, `POST /api/v1/sessions`), rooms created (`POST /api/v1/threads`),
//! then one WebSocket per user. User `i` lives on node `i mod n`, so a room's members are spread
//! over every node.

use crate::conn::{self, ConnectOpts, Hello, WsStream};
use crate::target::Node;
use crate::{BenchError, Result};
use confab_protocol::api::{CreateThread, Credentials, LoginResponse};
use confab_protocol::{ThreadId, UserId};
use futures_util::StreamExt;
use std::time::Duration;

/// The password of every benchmark user.
const PASSWORD: &str = "bench-password-1";

/// A thin client for the setup calls.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    /// A client with a generous per-request timeout (setup runs while nodes are busy).
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }

    /// The underlying client (for scrapes).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn post<T: serde::Serialize>(
        &self,
        url: String,
        token: Option<&str>,
        body: &T,
        expect: u16,
    ) -> Result<serde_json::Value> {
        let mut req = self.client.post(&url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| BenchError::Http(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status != expect {
            return Err(BenchError::Http(format!(
                "POST {url}: {status} {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        serde_json::from_str(&text).map_err(|e| BenchError::Http(format!("POST {url}: {e}")))
    }

    /// Register `username` and log in; returns the user id and a bearer token.
    pub async fn register_and_login(
        &self,
        node: &Node,
        username: &str,
    ) -> Result<(UserId, String)> {
        let creds = Credentials {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
        };
        self.post(format!("{}/api/v1/users", node.http), None, &creds, 201)
            .await?;
        let v = self
            .post(format!("{}/api/v1/sessions", node.http), None, &creds, 200)
            .await?;
        let login: LoginResponse =
            serde_json::from_value(v).map_err(|e| BenchError::Http(format!("login body: {e}")))?;
        Ok((login.user.id, login.token))
    }

    /// Create a named group thread holding the caller and `others`.
    pub async fn create_room(
        &self,
        node: &Node,
        token: &str,
        others: Vec<UserId>,
        name: String,
    ) -> Result<ThreadId> {
        let body = CreateThread {
            member_ids: others,
            name: Some(name),
            public: false,
        };
        let v = self
            .post(
                format!("{}/api/v1/threads", node.http),
                Some(token),
                &body,
                201,
            )
            .await?;
        v["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Http(format!("no thread id in {v}")))
    }
}

/// One benchmark user.
#[derive(Clone, Debug)]
pub struct BenchUser {
    /// Its id.
    pub id: UserId,
    /// Its bearer token.
    pub token: String,
    /// Index of the node it connects to.
    pub node: usize,
    /// Index of its room, if any.
    pub room: Option<usize>,
}

/// One room: a group thread and its members (indices into [`Fleet::users`]).
#[derive(Clone, Debug)]
pub struct Room {
    /// The thread.
    pub thread: ThreadId,
    /// Its members.
    pub members: Vec<usize>,
}

/// What to set up.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// How many users.
    pub users: usize,
    /// Members per room (0: no rooms). The last room may be smaller.
    pub room_size: usize,
    /// Setup requests in flight at once.
    pub concurrency: usize,
}

/// Users and rooms, ready to connect.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Every user.
    pub users: Vec<BenchUser>,
    /// Every room.
    pub rooms: Vec<Room>,
}

impl Fleet {
    /// Register the users and create the rooms.
    pub async fn build(api: &Api, nodes: Vec<Node>, spec: &FleetSpec) -> Result<Fleet> {
        if spec.users > crate::bounds::MAX_CLIENTS {
            return Err(BenchError::Invalid(format!(
                "at most {} users",
                crate::bounds::MAX_CLIENTS
            )));
        }
        if spec.room_size == 1 {
            return Err(BenchError::Invalid("rooms need at least 2 members".into()));
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        let run = &run[..8];
        let n = nodes.len();
        let conc = spec.concurrency.max(1);
        let registered: Vec<Result<(UserId, String)>> = futures_util::stream::iter(0..spec.users)
            .map(|i| {
                let api = api.clone();
                let node = nodes[i % n].clone();
                let name = format!("b{run}_{i}");
                async move { api.register_and_login(&node, &name).await }
            })
            .buffered(conc)
            .collect()
            .await;
        let mut users = Vec::with_capacity(spec.users);
        for (i, r) in registered.into_iter().enumerate() {
            let (id, token) = r?;
            users.push(BenchUser {
                id,
                token,
                node: i % n,
                room: None,
            });
        }
        let mut rooms = Vec::new();
        if spec.room_size >= 2 {
            let plans: Vec<Vec<usize>> = (0..spec.users)
                .collect::<Vec<_>>()
                .chunks(spec.room_size)
                .filter(|c| c.len() >= 2)
                .map(|c| c.to_vec())
                .collect();
            let created: Vec<Result<ThreadId>> =
                futures_util::stream::iter(plans.iter().enumerate())
                    .map(|(r, members)| {
                        let api = api.clone();
                        let first = &users[members[0]];
                        let node = nodes[first.node].clone();
                        let token = first.token.clone();
                        let others = members[1..].iter().map(|&m| users[m].id).collect();
                        async move {
                            api.create_room(&node, &token, others, format!("bench-{run}-{r}"))
                                .await
                        }
                    })
                    .buffered(conc)
                    .collect()
                    .await;
            for (r, (members, thread)) in plans.into_iter().zip(created).enumerate() {
                let thread = thread?;
                for &m in &members {
                    users[m].room = Some(r);
                }
                rooms.push(Room { thread, members });
            }
        }
        Ok(Fleet {
            nodes,
            users,
            rooms,
        })
    }

    /// [`Fleet::build`], then [`Fleet::connect_everyone`]: the users registered, in their rooms
    /// and connected, for the scenarios that time neither.
    pub async fn connected(
        api: &Api,
        nodes: Vec<Node>,
        spec: &FleetSpec,
        connect_concurrency: usize,
    ) -> Result<(Fleet, Vec<(WsStream, Hello)>)> {
        let fleet = Fleet::build(api, nodes, spec).await?;
        let conns = fleet.connect_everyone(connect_concurrency).await?;
        Ok((fleet, conns))
    }

    /// Open one WebSocket per user with default options, spread over as many loopback source
    /// addresses as [`conn::DEFAULT_PER_SOURCE`] asks for, `concurrency` handshakes at a time,
    /// within two minutes; in user order. What the scenarios that only need everyone connected
    /// do.
    pub async fn connect_everyone(&self, concurrency: usize) -> Result<Vec<(WsStream, Hello)>> {
        let sources = conn::sources_for(self.users.len(), conn::DEFAULT_PER_SOURCE);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        self.connect_all(ConnectOpts::default(), &sources, concurrency, deadline)
            .await
    }

    /// Open one WebSocket per user (`opts.source` is replaced per connection when `sources` is
    /// not empty), `concurrency` handshakes at a time, in user order.
    pub async fn connect_all(
        &self,
        opts: ConnectOpts,
        sources: &[std::net::Ipv4Addr],
        concurrency: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<(WsStream, Hello)>> {
        let per_source = self.users.len().div_ceil(sources.len().max(1)).max(1);
        let results: Vec<std::result::Result<(WsStream, Hello, u32), conn::ConnectError>> =
            futures_util::stream::iter(self.users.iter().enumerate())
                .map(|(i, u)| {
                    let mut o = opts;
                    if !sources.is_empty() {
                        o.source = sources.get(i / per_source).copied();
                    }
                    let node = self.nodes[u.node].clone();
                    let token = u.token.clone();
                    async move { conn::connect_retrying(&node, &token, &o, deadline).await }
                })
                .buffered(concurrency.max(1))
                .collect()
                .await;
        results
            .into_iter()
            .map(|r| {
                r.map(|(ws, hello, _)| (ws, hello))
                    .map_err(|e| BenchError::Ws(e.to_string()))
            })
            .collect()
    }
}
