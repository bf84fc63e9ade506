//! The node's listening socket.

use std::net::TcpListener;

/// Bind `host:port` and listen with room for `backlog` connections waiting to be accepted (the
/// kernel caps it at `net.core.somaxconn`).
///
/// Why not `TcpListener::bind` alone: the standard library listens with a backlog of 128, and
/// actix's `HttpServer::backlog` applies only to sockets actix binds itself, not to one handed
/// to `HttpServer::listen`. With 128, a burst of connects (a reconnect storm, the benchmark's
/// 256 connects in flight) overflowed the accept queue while the workers were busy: the kernel
/// dropped those SYNs and each client waited a full second for its retransmission.
pub fn bind_listener(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind((host, port))?;
    // Listening again on a listening socket only changes its backlog.
    socket2::SockRef::from(&listener).listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Duration;

    /// Nobody accepts, so every connect must wait in the accept queue: past the standard
    /// library's 128 the kernel drops the SYN and the connect times out.
    #[test]
    fn connects_beyond_128_wait_in_the_configured_backlog() -> std::io::Result<()> {
        let listener = bind_listener("127.0.0.1", 0, 512)?;
        let addr = listener.local_addr()?;
        // Held open, so each one keeps its place in the queue.
        let mut clients = Vec::new();
        for i in 0..300 {
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| std::io::Error::other(format!("connect {i}: {e}")))?;
            clients.push(c);
        }
        Ok(())
    }
}
