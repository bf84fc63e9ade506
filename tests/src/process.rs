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
        Self::spawn(Command::new(confab_binary()), envs).await
    }

    /// [`NodeProcess::start`], the process allowed on one CPU only (`taskset -c N`, N the first
    /// CPU this process may use): what a container with a CPU limit of 1 looks like to it (its
    /// available parallelism is 1).
    pub async fn start_on_one_cpu(envs: &[(&str, String)]) -> NodeProcess {
        let mut cmd = Command::new("taskset");
        // taskset execs confab in its own place: the child's pid is confab's.
        cmd.arg("-c").arg(first_allowed_cpu()).arg(confab_binary());
        Self::spawn(cmd, envs).await
    }

    async fn spawn(mut cmd: Command, envs: &[(&str, String)]) -> NodeProcess {
        let port = free_port();
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

/// A private Postgres server (its own data folder, trust auth, a free port on 127.0.0.1), for
/// outage tests: [`PrivatePostgres::stop`] is an immediate shutdown, like a crash.
///
/// Postgres refuses to run as root, so when the tests run as root the server's commands run as
/// the `postgres` system user (created by the Debian package) and the folder is handed to it.
pub struct PrivatePostgres {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

impl PrivatePostgres {
    /// `initdb` a fresh cluster in a temp folder and start it.
    pub async fn start() -> PrivatePostgres {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("confab-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("pg dir: {e}"));
        let mut pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&pg.dir);
            pg.run_checked(chown, "chown").await;
        }
        let initdb = pg.bin.join("initdb");
        let data = pg.data();
        let mut cmd = pg.as_server_user(&initdb);
        cmd.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data);
        pg.run_checked(cmd, "initdb").await;
        pg.restart().await;
        pg
    }

    /// Admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop it at once (`pg_ctl stop -m immediate`: no goodbye to clients, crash recovery on
    /// the next start).
    pub async fn stop(&mut self) {
        if !self.running {
            return;
        }
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = self.as_server_user(&pg_ctl);
        cmd.args(["stop", "-m", "immediate", "-w", "-D"]).arg(&data);
        self.run_checked(cmd, "pg_ctl stop").await;
        self.running = false;
    }

    /// Start it (again) on the same port with the same data; returns when it accepts
    /// connections.
    pub async fn restart(&mut self) {
        self.stop().await;
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let log = self.dir.join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let mut cmd = self.as_server_user(&pg_ctl);
        cmd.args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(opts);
        self.run_checked(cmd, "pg_ctl start").await;
        self.running = true;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private postgres did not listen on {}", self.port);
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_server_user(&self, program: &std::path::Path) -> Command {
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // The server user may not be allowed into the test's working directory.
        cmd.current_dir(&self.dir);
        cmd
    }

    async fn run_checked(&self, cmd: Command, what: &str) {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{what} timed out"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "{what} failed ({}): {}{}\nserver.log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = self.as_server_user(&self.bin.join("pg_ctl"));
            let _ = cmd
                .args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(self.data())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` (or `CONFAB_PG_BIN`).
pub fn postgres_bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("CONFAB_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("no Postgres server binaries under /usr/lib/postgresql (scripts/ensure-services.sh installs them)")
    })
}

/// Whether this process runs as root (uid 0).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The first CPU this process may run on (`Cpus_allowed_list` of /proc/self/status, e.g.
/// `0-1` or `2,5-7`): CPU 0 is not always among them in a container.
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| {
            let first: String = list
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            (!first.is_empty()).then_some(first)
        })
        .unwrap_or_else(|| "0".into())
}
