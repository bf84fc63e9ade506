//! Serving on the node's own thread (`server.single_thread`): the HTTP/WebSocket accept loop
//! that replaces actix's acceptor and worker threads, so that sessions, the pub/sub reader, the
//! database writers and Redis share one thread and hand work to each other without waking
//! another thread (docs/operations.md, "Scaling", has the measurements).

use crate::config::SingleThread;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether a node serves on its own thread, given `server.single_thread`, the worker threads
/// that would serve otherwise (`workers`: `server.workers`, or when that is 0 the CPUs this
/// process may use — its available parallelism) and whether it runs in an actix System
/// (`in_system`: the confab binary's runtime; an embedding in a plain tokio runtime, such as the
/// in-process test clusters, has none). `Err` when it is asked for where it cannot run.
///
/// Why `auto` chooses it whenever one worker thread would serve (`server.workers = 1`, or 0 on
/// one CPU): that node still runs the broker, the database writers and Redis on its
/// main thread, and every hand-off between the two costs a wake-up and a context switch. With
/// one CPU the second thread buys no parallelism, only those (measured, each node pinned to a
/// CPU: -21 % node CPU at 1,000 msgs/s, -18 % at 10,000). With one worker on a machine whose
/// cores other processes share — `make cluster`'s and `make bench`'s nodes, a node beside its
/// database — it bought none either (two unpinned nodes on 2 cores, Postgres, Redis and the
/// load generator beside them: -18 % node CPU at 10,000 msgs/s; at 28,000, saturated, -11 %
/// and p99 145 → 62 ms). More workers (asked for, or one per CPU) keep worker threads: a single
/// thread cannot use a second core. A node given a core of its own beside a busy main thread
/// can still ask for `false`.
pub fn chosen(
    setting: SingleThread,
    workers: usize,
    in_system: bool,
) -> Result<bool, &'static str> {
    match setting {
        SingleThread::On if !in_system => {
            Err("needs the confab binary's runtime (an actix System)")
        }
        SingleThread::On => Ok(true),
        SingleThread::Off => Ok(false),
        SingleThread::Auto => Ok(in_system && workers <= 1),
    }
}

/// Serve HTTP and WebSocket connections on this thread (`server.single_thread`): what an actix
/// worker does — one HTTP/1 dispatcher task per connection, with the same timeouts as
/// `HttpServer`'s defaults — without the worker thread, and without the accept thread that hands
/// it connections. At most `max_connections` at once: beyond it, new ones wait in the kernel's
/// backlog, as with `HttpServer`. Returns when `stop` is cancelled (the drain), leaving the open
/// connections to finish.
pub async fn serve<F, I, S, Bd>(
    listener: std::net::TcpListener,
    app: F,
    max_connections: usize,
    stop: CancellationToken,
) -> std::io::Result<()>
where
    F: Fn() -> I,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_service::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig>
        + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_http::Response<Bd>> + 'static,
    Bd: actix_web::body::MessageBody + 'static,
{
    use actix_service::{Service as _, ServiceFactory as _, ServiceFactoryExt as _};
    let addr = listener.local_addr()?;
    let factory = actix_http::HttpService::build()
        .keep_alive(actix_http::KeepAlive::Timeout(Duration::from_secs(5)))
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        .h1_allow_half_closed(true)
        .local_addr(addr)
        .finish(actix_service::map_config(
            app()
                .into_factory()
                .map_err(|err| err.into().error_response()),
            |_| actix_web::dev::AppConfig::default(),
        ))
        .tcp();
    let service = std::rc::Rc::new(
        factory
            .new_service(())
            .await
            .map_err(|_| std::io::Error::other("building the HTTP service"))?,
    );
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            return Ok(());
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // As `HttpServer` is set up: frames are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        actix_web::rt::spawn(async move {
            let _ = service.call(stream).await;
            drop(slot);
        });
    }
}

/// A node's serving loop, to be started on the thread that runs it (it is not `Send`; this
/// closure that makes it is, so a built node can be moved to that thread first).
pub type StartHere = Box<
    dyn FnOnce(
            CancellationToken,
        ) -> futures_util::future::LocalBoxFuture<'static, std::io::Result<()>>
        + Send,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_serves_on_one_thread_whenever_one_worker_would_serve() {
        use SingleThread::*;
        // One worker (asked for, or one per CPU on one CPU): the node's own thread.
        assert_eq!(chosen(Auto, 1, true), Ok(true));
        // More: worker threads.
        assert_eq!(chosen(Auto, 2, true), Ok(false));
        assert_eq!(chosen(Auto, 64, true), Ok(false));
        // No actix System (an embedding): worker threads, quietly.
        assert_eq!(chosen(Auto, 1, false), Ok(false));
        // Explicit choices win; `true` without a System is an error, not a silent fallback.
        assert_eq!(chosen(On, 8, true), Ok(true));
        assert!(chosen(On, 1, false).is_err());
        assert_eq!(chosen(Off, 1, true), Ok(false));
    }
}
