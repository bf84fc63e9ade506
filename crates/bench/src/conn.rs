//! Opening WebSockets to a node: a TCP connect from a chosen 127.0.0.x source address (one
//! source address runs out of ephemeral ports near 28,000 connections to one node), Nagle off,
//! the upgrade with `?token=`, and the `hello` frame.

use crate::target::Node;
use confab_protocol::{ServerFrame, SessionId, UserId};
use futures_util::StreamExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMsg};
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket.
pub type WsStream = WebSocketStream<TcpStream>;

/// How to open a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOpts {
    /// Bind the client socket to this loopback source address first.
    pub source: Option<Ipv4Addr>,
    /// Ask the server to hold live delivery until a `resume` frame (`&resume=1`).
    pub resume: bool,
    /// The client's read buffer. tungstenite zero-fills all of it before every read (also the
    /// read that finds nothing), so it is kept small: with 16 KiB, `memset` was 5 % of the
    /// load generator's CPU at 90,000 deliveries/s. Larger frames still arrive whole (the
    /// buffer grows for them); frames here are a few hundred bytes.
    pub read_buffer: usize,
    /// Bound on TCP connect + upgrade + `hello`.
    pub timeout: Duration,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        Self {
            source: None,
            resume: false,
            read_buffer: 4 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node refused the upgrade for now (503: admission control or draining); retry later.
    #[error("node busy (503), retry after {0:?}")]
    Busy(Duration),
    /// Anything else (refused connect, other status, no `hello`, timeout).
    #[error("{0}")]
    Failed(String),
}

/// What the `hello` frame said.
#[derive(Clone, Debug)]
pub struct Hello {
    /// The authenticated user.
    pub user: UserId,
    /// This session.
    pub session: SessionId,
    /// The node serving it.
    pub node_id: String,
}

/// Connections per source address by default. Well below the ~28,000 ephemeral ports an
/// address has: the kernel's choice of a free port for `connect()` gets slower as the
/// address's ports fill up, and at 19,000 connections from one address the load generator
/// spent 6.6-14.3 CPU-s on 19,000 connects against 2.7 s from 5 addresses of ≤ 4,000 each
/// (scripts/bench-ab.sh, idle, same node binary): the connect rate was the generator's.
pub const DEFAULT_PER_SOURCE: usize = 4_000;

/// The loopback source addresses to spread `n` connections to one node over, at most
/// `per_source` per address (127.0.0.1, 127.0.0.2, …).
pub fn sources_for(n: usize, per_source: usize) -> Vec<Ipv4Addr> {
    let count = n.div_ceil(per_source.max(1)).clamp(1, 250);
    (0..count)
        .map(|i| Ipv4Addr::new(127, 0, 0, 1 + i as u8))
        .collect()
}

async fn tcp(node: &Node, source: Option<Ipv4Addr>) -> Result<TcpStream, ConnectError> {
    let addr: SocketAddr = match node.authority().parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(node.authority())
            .await
            .map_err(|e| ConnectError::Failed(format!("resolve {}: {e}", node.authority())))?
            .next()
            .ok_or_else(|| ConnectError::Failed(format!("no address for {}", node.authority())))?,
    };
    let socket = match addr.ip() {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ConnectError::Failed(format!("socket: {e}")))?;
    // Binding a source address means an explicit bind(port 0), whose port search is linear in
    // the ports already taken on that address (it dominated the load generator's profile at
    // 19,000 connections). For the destination's own address the kernel chooses that source
    // anyway and connect()'s autobind is cheap, so only other addresses are bound.
    if let (Some(src), IpAddr::V4(dst)) = (source, addr.ip()) {
        if src == dst {
            return connect_socket(socket, addr).await;
        }
        socket
            .bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| ConnectError::Failed(format!("bind {src}: {e}")))?;
    }
    connect_socket(socket, addr).await
}

async fn connect_socket(socket: TcpSocket, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| ConnectError::Failed(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Open a WebSocket to `node` as the holder of `token` and read its `hello`.
pub async fn connect(
    node: &Node,
    token: &str,
    opts: &ConnectOpts,
) -> Result<(WsStream, Hello), ConnectError> {
    match tokio::time::timeout(opts.timeout, connect_inner(node, token, opts)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Failed(format!(
            "connect to {} timed out after {:?}",
            node.ws, opts.timeout
        ))),
    }
}

async fn connect_inner(
    node: &Node,
    token: &str,
    opts: &ConnectOpts,
) -> Result<(WsStream, Hello), ConnectError> {
    let stream = tcp(node, opts.source).await?;
    let url = if opts.resume {
        format!("{}?token={token}&resume=1", node.ws)
    } else {
        format!("{}?token={token}", node.ws)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(opts.read_buffer)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) if resp.status().as_u16() == 503 => {
                let secs = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                ConnectError::Busy(Duration::from_secs(secs))
            }
            tungstenite::Error::Http(resp) => {
                ConnectError::Failed(format!("upgrade refused: {}", resp.status()))
            }
            other => ConnectError::Failed(format!("upgrade: {other}")),
        })?;
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) => {
                return match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Hello {
                        user,
                        session_id,
                        node_id,
                        ..
                    }) => Ok((
                        ws,
                        Hello {
                            user: user.id,
                            session: session_id,
                            node_id,
                        },
                    )),
                    _ => Err(ConnectError::Failed(format!(
                        "expected hello, got {}",
                        t.chars().take(200).collect::<String>()
                    ))),
                };
            }
            Some(Ok(WsMsg::Close(c))) => {
                return Err(ConnectError::Failed(format!("closed before hello: {c:?}")))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Failed(format!("before hello: {e}"))),
            None => return Err(ConnectError::Failed("ended before hello".into())),
        }
    }
}

/// [`connect`], retrying refusals (503, honouring `Retry-After` capped at 1 s) and failed
/// connects until `deadline`. Returns the stream and how many attempts were refused.
pub async fn connect_retrying(
    node: &Node,
    token: &str,
    opts: &ConnectOpts,
    deadline: tokio::time::Instant,
) -> Result<(WsStream, Hello, u32), ConnectError> {
    let mut refused = 0u32;
    let mut backoff = Duration::from_millis(20);
    loop {
        match connect(node, token, opts).await {
            Ok((ws, hello)) => return Ok((ws, hello, refused)),
            Err(e) => {
                refused += 1;
                let wait = match &e {
                    ConnectError::Busy(d) => (*d).min(Duration::from_secs(1)),
                    ConnectError::Failed(_) => backoff,
                };
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if tokio::time::Instant::now() + wait > deadline {
                    return Err(e);
                }
                // Jitter so a storm of retries does not arrive in lockstep.
                let jitter = Duration::from_micros(rand::random::<u64>() % 50_000);
                tokio::time::sleep(wait + jitter).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_connections_over_loopback_addresses() {
        assert_eq!(sources_for(10, 25_000), vec![Ipv4Addr::new(127, 0, 0, 1)]);
        let s = sources_for(60_000, 25_000);
        assert_eq!(
            s,
            vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
    }
}
