//! The chaos client model: many users in shared threads keep sending while nodes, Redis and
//! Postgres fail underneath them. Each client behaves as a well-written real client should:
//! it reconnects with backoff and full jitter to any live node, resumes from the last `seq` it
//! holds per thread, and retries unacknowledged sends with the same `client_msg_id`.
//!
//! Every received message is checked on the fly against the promise: per thread, exactly the
//! next `seq` (a lower one is a duplicate, a higher one a hole).

use confab_protocol::ThreadId;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::MaybeTlsStream;

/// Where the clients may connect: the ports of the nodes currently up.
#[derive(Clone, Default)]
pub struct Ports(Arc<Mutex<Vec<u16>>>);

impl Ports {
    /// Replace the list.
    pub fn set(&self, ports: Vec<u16>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = ports;
    }

    /// A random live port.
    pub fn pick(&self) -> Option<u16> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_empty() {
            return None;
        }
        Some(g[rand::thread_rng().gen_range(0..g.len())])
    }
}

/// Counters shared by all clients.
#[derive(Default)]
pub struct Figures {
    /// New messages created (each retried until acknowledged).
    pub created: AtomicU64,
    /// Send frames written (including retries).
    pub sent: AtomicU64,
    /// Distinct messages acknowledged.
    pub acked: AtomicU64,
    /// Sends refused (e.g. `unavailable` while Postgres was down), later retried.
    pub refused: AtomicU64,
    /// Message frames received in order.
    pub delivered: AtomicU64,
    /// Message frames at or below the last `seq` held.
    pub duplicates: AtomicU64,
    /// `seq`s skipped over (holes).
    pub lost: AtomicU64,
    /// Reconnects.
    pub reconnects: AtomicU64,
    /// Close codes seen, as text.
    pub closes: Mutex<BTreeMap<String, u64>>,
}

/// What one client ends with.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Last `seq` held per thread.
    pub last: HashMap<ThreadId, i64>,
    /// Acknowledged `(thread, seq)` pairs of this client's own messages.
    pub acked: Vec<(ThreadId, i64)>,
    /// Sends never acknowledged.
    pub unacked: usize,
}

/// One simulated user.
pub struct Client {
    /// Their bearer token.
    pub token: String,
    /// Their threads.
    pub threads: Vec<ThreadId>,
    /// Index, for unique client_msg_ids.
    pub index: usize,
    /// Stop creating new messages (outstanding ones are still retried).
    pub stop_sending: Arc<AtomicBool>,
    /// End the client (after a last catch-up).
    pub finish: Arc<AtomicBool>,
    /// While set, this client does not read its socket (a stalled consumer).
    pub stall: Arc<AtomicBool>,
    /// Pause between new messages.
    pub interval: Duration,
}

struct Conn {
    ws: tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

async fn connect(port: u16, token: &str) -> Option<Conn> {
    // A small receive buffer makes a stalled reader overflow the server's queue quickly.
    let sock = TcpSocket::new_v4().ok()?;
    let _ = sock.set_recv_buffer_size(8192);
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let stream = tokio::time::timeout(Duration::from_secs(3), sock.connect(addr))
        .await
        .ok()?
        .ok()?;
    let url = format!("ws://127.0.0.1:{port}/ws?token={token}&resume=1");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await
    .ok()?
    .ok()?;
    Some(Conn { ws })
}

impl Client {
    /// Run until `finish`, then return what this client holds.
    pub async fn run(self, ports: Ports, figures: Arc<Figures>) -> Outcome {
        let mut last: HashMap<ThreadId, i64> = self.threads.iter().map(|t| (*t, 0)).collect();
        // client_msg_id -> (thread, body); retried until acked.
        let mut outstanding: BTreeMap<String, (ThreadId, String)> = BTreeMap::new();
        let mut acked = Vec::new();
        let mut next_msg = 0u64;
        let mut attempt = 0u32;
        let mut req = 0u64;
        while !self.finish.load(Ordering::Relaxed) || !outstanding.is_empty() {
            if self.finish.load(Ordering::Relaxed) && attempt > 60 {
                break;
            }
            // Exponential backoff with full jitter (the documented client guidance).
            if attempt > 0 {
                let cap = (50u64 << attempt.min(6)).min(2000);
                let wait = rand::thread_rng().gen_range(0..=cap);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let Some(port) = ports.pick() else {
                attempt += 1;
                continue;
            };
            let Some(mut conn) = connect(port, &self.token).await else {
                attempt += 1;
                continue;
            };
            // hello
            match tokio::time::timeout(Duration::from_secs(5), conn.ws.next()).await {
                Ok(Some(Ok(WsMsg::Text(t)))) if t.contains("\"hello\"") => {}
                _ => {
                    attempt += 1;
                    continue;
                }
            }
            req += 1;
            let resume_req = format!("resume{req}");
            let points: Vec<Value> = last
                .iter()
                .map(|(t, s)| json!({"thread_id": t, "last_seq": s}))
                .collect();
            if conn
                .ws
                .send(WsMsg::Text(
                    json!({"type":"resume","req":resume_req,"threads":points})
                        .to_string()
                        .into(),
                ))
                .await
                .is_err()
            {
                attempt += 1;
                continue;
            }
            // Retry whatever was not acknowledged, with the same ids.
            let mut ok = true;
            for (cid, (t, body)) in &outstanding {
                figures.sent.fetch_add(1, Ordering::Relaxed);
                req += 1;
                let f = json!({"type":"send","req":format!("s{req}"),"thread_id":t,"client_msg_id":cid,"body":body});
                if conn
                    .ws
                    .send(WsMsg::Text(f.to_string().into()))
                    .await
                    .is_err()
                {
                    ok = false;
                    break;
                }
            }
            if !ok {
                attempt += 1;
                continue;
            }
            if attempt > 0 {
                figures.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end_code = loop {
                if self.stall.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                if self.finish.load(Ordering::Relaxed) && outstanding.is_empty() {
                    let _ = conn.ws.close(None).await;
                    return Outcome {
                        last,
                        acked,
                        unacked: 0,
                    };
                }
                tokio::select! {
                    msg = conn.ws.next() => {
                        match msg {
                            Some(Ok(WsMsg::Text(t))) => {
                                let f: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                                self.on_frame(&f, &mut last, &mut outstanding, &mut acked, &figures);
                            }
                            Some(Ok(WsMsg::Close(c))) => {
                                break c.map(|c| u16::from(c.code).to_string()).unwrap_or_else(|| "1005".into());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break "1006".into(),
                        }
                    }
                    _ = tick.tick(), if !self.stop_sending.load(Ordering::Relaxed) => {
                        next_msg += 1;
                        let t = self.threads[rand::thread_rng().gen_range(0..self.threads.len())];
                        let cid = format!("c{}-{}", self.index, next_msg);
                        let body = format!("from {} #{}", self.index, next_msg);
                        outstanding.insert(cid.clone(), (t, body.clone()));
                        figures.created.fetch_add(1, Ordering::Relaxed);
                        figures.sent.fetch_add(1, Ordering::Relaxed);
                        req += 1;
                        let f = json!({"type":"send","req":format!("s{req}"),"thread_id":t,"client_msg_id":cid,"body":body});
                        if conn.ws.send(WsMsg::Text(f.to_string().into())).await.is_err() {
                            break "send-failed".into();
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        // Periodically retry refused sends on the same connection.
                        if self.stop_sending.load(Ordering::Relaxed) && !outstanding.is_empty() {
                            for (cid, (t, body)) in outstanding.clone() {
                                req += 1;
                                figures.sent.fetch_add(1, Ordering::Relaxed);
                                let f = json!({"type":"send","req":format!("s{req}"),"thread_id":t,"client_msg_id":cid,"body":body});
                                if conn.ws.send(WsMsg::Text(f.to_string().into())).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            };
            *figures
                .closes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(end_code)
                .or_default() += 1;
            attempt = 1;
        }
        Outcome {
            last,
            acked,
            unacked: outstanding.len(),
        }
    }

    fn on_frame(
        &self,
        f: &Value,
        last: &mut HashMap<ThreadId, i64>,
        outstanding: &mut BTreeMap<String, (ThreadId, String)>,
        acked: &mut Vec<(ThreadId, i64)>,
        figures: &Figures,
    ) {
        match f["type"].as_str() {
            Some("message") => {
                let Some(t) = f["thread_id"]
                    .as_str()
                    .and_then(|s| s.parse::<ThreadId>().ok())
                else {
                    return;
                };
                let seq = f["seq"].as_i64().unwrap_or(0);
                let held = last.entry(t).or_insert(0);
                if seq <= *held {
                    figures.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    if seq > *held + 1 {
                        figures
                            .lost
                            .fetch_add((seq - *held - 1) as u64, Ordering::Relaxed);
                    }
                    figures.delivered.fetch_add(1, Ordering::Relaxed);
                    *held = seq;
                }
            }
            Some("ack") => {
                let cid = f["client_msg_id"].as_str().unwrap_or_default();
                if let Some((t, _)) = outstanding.remove(cid) {
                    figures.acked.fetch_add(1, Ordering::Relaxed);
                    acked.push((t, f["seq"].as_i64().unwrap_or(0)));
                }
            }
            Some("error") => {
                figures.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
