//! A loopback TCP proxy that can be frozen: bytes from the server stop flowing while the
//! connection stays open — the "silent stall" of a pub/sub connection whose health checks
//! stay green while delivery has stopped. It also keeps what clients sent, for tests that look
//! at a protocol's messages. It can also be cut: every connection through it dropped, and new
//! ones closed at once, until restored (the server unreachable from this one client).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy to `127.0.0.1:upstream`.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    frozen: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    sent: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free port and forward to `upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let frozen = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (f, h, s, c, cs) = (
            frozen.clone(),
            held.clone(),
            sent.clone(),
            cut.clone(),
            conns.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (f, h, s) = (f.clone(), h.clone(), s.clone());
                let conn = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        pipe(client, server, f, h, s).await;
                    }
                });
                cs.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            }
        });
        Proxy {
            port,
            frozen,
            held,
            cut,
            conns,
            sent,
            task,
        }
    }

    /// Every byte clients sent through the proxy so far, in order (one client at a time makes
    /// this one connection's stream).
    pub fn sent(&self) -> Vec<u8> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stop forwarding server → client bytes (connections stay open).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Resume forwarding.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Stop forwarding client → server bytes (they are kept and forwarded on release): what
    /// clients send reaches the server late, and in order.
    pub fn hold_requests(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Forward what was held, and everything after it.
    pub fn release_requests(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// Drop every connection through the proxy and close new ones at once.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.drop_connections();
    }

    fn drop_connections(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for c in conns {
            c.abort();
        }
    }

    /// Accept and forward connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// `redis://127.0.0.1:port`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    frozen: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<u8>>>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sent.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
            while held.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Data read just before a freeze is held back too.
                    while frozen.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(up, down);
}
