//! Gateway nodes as separate OS processes (for kill -9 and restart tests), and private
//! Redis/Postgres server instances on free ports (for outage tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

/// Path of the `confab` binary built alongside the tests.
pub fn confab_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CONFAB_BIN") {
        return PathBuf::from(p);
    }
    // tests run from target/<profile>/deps; the binary is in target/<profile>.
    let mut p = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("confab")
}

/// A gateway node running as a child process.
pub struct NodeProcess {
    /// The child.
    pub child: Child,
    /// Its port.
    pub port: u16,
}

impl NodeProcess {
    /// Start `confab` with these environment overrides and wait until `/healthz` answers.
    pub async fn start(envs: &[(&str, String)]) -> NodeProcess {
        let port = free_port();
        let mut cmd = Command::new(confab_binary());
        cmd.env("CONFAB__SERVER__PORT", port.to_string())
            .env("CONFAB__SERVER__HOST", "127.0.0.1")
            .env("CONFAB__SERVER__WORKERS", "1")
            .env("CONFAB__LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", confab_binary()));
        let node = NodeProcess { child, port };
        node.wait_healthy().await;
        node
    }

    /// Wait up to 30 s for `/healthz`.
    pub async fn wait_healthy(&self) {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node on port {} never became healthy", self.port);
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit (bounded).
    pub async fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill9();
    }

    /// `http://127.0.0.1:port`.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:port/ws`.
    pub fn ws_base(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` on a free port, for outage tests.
pub struct PrivateRedis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl PrivateRedis {
    /// Start one (no persistence).
    pub async fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            child: None,
            port: free_port(),
        };
        r.restart().await;
        r
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGKILL: an outage, not a goodbye).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}"));
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis did not start");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
