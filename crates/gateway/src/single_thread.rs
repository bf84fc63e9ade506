//! Serving on the node's own thread (`server.single_thread`): the HTTP/WebSocket accept loop
//! that replaces actix's acceptor and worker threads, so that sessions, the pub/sub reader, the
//! database writers and Redis share one thread and hand work to each other without waking
//! another thread (docs/operations.md, "Scaling", has the measurements).

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
