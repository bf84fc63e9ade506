//! Building and running a node. `main` and the tests build the very same [`Application`].

use crate::broker::{Broker, Inbound, MemoryBroker, RedisBroker, RedisBrokerOptions};
use crate::chat::{publish_stored, Chat};
use crate::config::{ms, Settings};
use crate::cors::AllowedOrigins;
use crate::directory::{Directory, MemoryDirectory, RedisDirectory};
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::keys::Keys;
use crate::lookups::Lookups;
use crate::metrics::Metrics;
use crate::presence::{Announcer, MemoryPresence, Presence, RedisPresence};
use crate::ratelimit::TokenBucket;
use crate::single_thread;
use crate::state::AppState;
use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{web, App, HttpServer};
use confab_persistence::{
    BatchHooks, OnBatch, OnCommit, OnStored, SendBatcher, Store, StoreOptions,
};
use confab_protocol::CloseReason;
use secrecy::ExposeSecret;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a built node serves: actix worker threads, or its own thread (`server.single_thread`).
enum Serving {
    /// `HttpServer`: an acceptor thread and `server.workers` worker threads.
    Workers(Server),
    /// [`single_thread::serve`], started on the node's own thread when it runs.
    Here(single_thread::StartHere),
}

fn spawn_background(
    hub: &Arc<Hub>,
    settings: &Settings,
    background: &CancellationToken,
    announcer: Announcer,
) {
    let sweep_every = ms(settings.delivery.sweep_interval_ms.max(100));
    let sweeper = hub.clone();
    let bg = background.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = bg.cancelled() => return,
                _ = tick.tick() => sweeper.sweep().await,
            }
        }
    });
    tokio::spawn(announcer.run(background.clone()));
}

/// A built node, listening but not yet serving.
pub struct Application {
    port: u16,
    server: Serving,
    state: Arc<AppState>,
    stop: CancellationToken,
    background: CancellationToken,
}

/// Stops a running [`Application`] gracefully (the same drain as SIGTERM).
#[derive(Clone)]
pub struct StopHandle(CancellationToken);

impl StopHandle {
    /// Begin the drain.
    pub fn stop(&self) {
        self.0.cancel();
    }
}

fn startup_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

/// The SQLite URL for the embedded store under `data_dir`.
fn embedded_url(settings: &Settings) -> Result<String> {
    let dir = &settings.database.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| startup_err("creating data_dir", e))?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        dir.join("confab.db").display()
    ))
}

impl Application {
    /// Connect to everything, bind the listener, and assemble the node.
    pub async fn build(settings: Settings) -> Result<Self> {
        let settings = Arc::new(settings);
        let db_url = settings.database.url.expose_secret().trim().to_owned();
        let redis_url = settings.redis.url.expose_secret().trim().to_owned();
        let clustered = !redis_url.is_empty();
        if settings.cluster.replicas > 1 && (db_url.is_empty() || redis_url.is_empty()) {
            return Err(Error::BadRequest(format!(
                "cluster.replicas = {} needs database.url (Postgres) and redis.url: the embedded \
                 store and the in-process broker cannot be shared between nodes",
                settings.cluster.replicas
            )));
        }
        if clustered && db_url.is_empty() {
            return Err(Error::BadRequest(
                "redis.url is set but database.url is empty: a cluster needs Postgres".into(),
            ));
        }
        // Worker threads: as configured, or one per CPU this process may use (affinity mask,
        // cgroup quota). How many would serve also decides `single_thread = auto`.
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        // Only the binary's runtime (an actix System: a LocalSet on the main thread) can run
        // sessions on this thread; a plain tokio runtime (an embedding, a test) cannot.
        let single_thread = single_thread::chosen(
            settings.server.single_thread,
            workers,
            actix_web::rt::System::try_current().is_some(),
        )
        .map_err(|e| startup_err("server.single_thread", e))?;
        let origins = AllowedOrigins::parse(&settings.server.cors_allowed_origins)
            .map_err(|e| startup_err("server.cors_allowed_origins", e))?;
        let node_id = if settings.node.id.is_empty() {
            format!("node-{:08x}", rand::random::<u32>())
        } else {
            settings.node.id.clone()
        };
        let metrics = Metrics::new(&node_id);
        let keys = Keys::new(&settings.redis.key_prefix);
        let url = if db_url.is_empty() {
            embedded_url(&settings)?
        } else {
            db_url
        };
        let store = Store::connect(&StoreOptions {
            url,
            max_connections: settings.database.max_connections,
            acquire_timeout: ms(settings.database.acquire_timeout_ms),
            migrate: settings.database.migrate_on_start,
        })
        .await
        .map_err(|e| startup_err("connecting to the database", e))?;

        let lookups = Arc::new(Lookups::new(store.clone(), &metrics));
        let hub = Hub::new(
            store.clone(),
            lookups.clone(),
            keys.clone(),
            metrics.clone(),
            &settings.delivery,
        );
        let inbound: Arc<dyn Inbound> = hub.clone();
        let Backends {
            broker,
            directory,
            presence,
            redis_pool,
        } = if clustered {
            redis_backends(&settings, &redis_url, &node_id, &keys, &metrics, &inbound).await?
        } else {
            memory_backends(&settings, &keys, &inbound)
        };
        hub.set_broker(broker.clone());
        // Group commit on both backends. SQLite has one writer (and the store one connection),
        // so more than one writer task would only queue for it.
        let writers = match store.backend() {
            confab_persistence::Backend::Postgres => settings.database.send_writers,
            confab_persistence::Backend::Sqlite => 1,
        };
        let batcher = {
            let (broker, keys) = (broker.clone(), keys.clone());
            let publish: OnStored =
                Arc::new(move |msg| publish_stored(broker.as_ref(), &keys, msg));
            let sizes = metrics.store_batch_size.clone();
            let on_batch: OnBatch = Arc::new(move |n| sizes.observe(n as f64));
            let commits = metrics.store_commit.clone();
            let on_commit: OnCommit = Arc::new(move |d| commits.observe(d.as_secs_f64()));
            SendBatcher::start(
                store.clone(),
                writers,
                settings.database.send_batch_max,
                settings.database.send_queue,
                Duration::from_micros(settings.database.send_linger_us),
                BatchHooks {
                    on_stored: Some(publish),
                    on_batch: Some(on_batch),
                    on_commit: Some(on_commit),
                },
            )
        };
        let chat = Chat::new(
            lookups.clone(),
            batcher,
            broker.clone(),
            directory,
            keys.clone(),
            metrics.clone(),
            Arc::new(settings.limits.clone()),
        )
        .with_control_backlog(settings.redis.control_log_max);
        let state = Arc::new(AppState {
            settings: settings.clone(),
            node_id: node_id.clone(),
            store,
            hub: hub.clone(),
            lookups,
            broker,
            chat,
            presence,
            metrics: metrics.clone(),
            keys,
            draining: Default::default(),
            admission: Mutex::new(TokenBucket::new(
                settings.limits.connects_per_sec,
                settings.limits.connects_burst,
            )),
            user_buckets: Mutex::new(Default::default()),
            tracker: TaskTracker::new(),
            redis_pool,
            single_thread,
            origins,
        });

        // Before serving: forget the sessions a previous life under this node name left behind,
        // and heartbeat, so the first sessions count on a clean slate.
        let announcer = Announcer::new(&state);
        announcer
            .start()
            .await
            .map_err(|e| startup_err("initializing presence", e))?;

        let listener = crate::listener::bind_listener(
            &settings.server.host,
            settings.server.port,
            settings.server.backlog,
        )
        .map_err(|e| startup_err("binding the listener", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| startup_err("reading the bound address", e))?
            .port();
        let data = web::Data::from(state.clone());
        let app = move || {
            let metrics = data.metrics.clone();
            App::new()
                .app_data(data.clone())
                .app_data(crate::error::json_config(
                    data.settings.limits.max_http_body_bytes,
                ))
                .app_data(crate::error::query_config())
                .app_data(crate::error::path_config())
                .wrap_fn(move |req, srv| {
                    let started = Instant::now();
                    let method = crate::metrics::Metrics::method_label(req.method());
                    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                    let metrics = metrics.clone();
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        if res.status() == actix_web::http::StatusCode::METHOD_NOT_ALLOWED {
                            res = crate::error::method_not_allowed(res);
                        }
                        metrics
                            .http_requests
                            .with_label_values(&[route.as_str(), method, res.status().as_str()])
                            .inc();
                        metrics
                            .http_duration
                            .with_label_values(&[&route])
                            .observe(started.elapsed().as_secs_f64());
                        Ok(res)
                    }
                })
                .configure(crate::routes::configure)
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(Error::NotFound("route"))
                }))
                // Outermost: preflights are answered before routing, and every answer —
                // errors and 404s included — carries the headers a browser needs to read it.
                .wrap(data.origins.middleware())
        };
        if single_thread {
            let max_connections = settings.server.max_connections_per_worker.max(1);
            let here: single_thread::StartHere = Box::new(move |stop: CancellationToken| {
                Box::pin(single_thread::serve(listener, app, max_connections, stop))
            });
            let background = CancellationToken::new();
            spawn_background(&hub, &settings, &background, announcer);
            tracing::info!(node = %node_id, port, clustered, "node built (single thread)");
            return Ok(Self {
                port,
                server: Serving::Here(here),
                state,
                stop: CancellationToken::new(),
                background,
            });
        }
        let server = HttpServer::new(app)
            // Frames are small and latency-bound: without TCP_NODELAY, Nagle's algorithm holds a
            // frame back until the client's delayed ACK (up to 40 ms on Linux).
            .on_connect(|conn, _ext| {
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .workers(workers)
            .max_connections(settings.server.max_connections_per_worker)
            .disable_signals()
            .shutdown_timeout(settings.shutdown.drain_timeout_secs)
            .listen(listener)
            .map_err(|e| startup_err("listening", e))?
            .run();

        let background = CancellationToken::new();
        spawn_background(&hub, &settings, &background, announcer);
        tracing::info!(node = %node_id, port, clustered, "node built");
        Ok(Self {
            port,
            server: Serving::Workers(server),
            state,
            stop: CancellationToken::new(),
            background,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests inspect it).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// A handle that starts the drain.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Serve until SIGTERM/SIGINT or the stop handle, then drain: not ready → stop accepting →
    /// finish in-flight sends → close sessions with 1012 → stop the broker.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            state,
            stop,
            background,
            ..
        } = self;
        let (handle, accept_stop, mut server) = match server {
            Serving::Workers(server) => {
                let handle = server.handle();
                (Some(handle), None, tokio::spawn(server))
            }
            Serving::Here(start) => {
                let accept = CancellationToken::new();
                let task = tokio::task::spawn_local(start(accept.clone()));
                (None, Some(accept), task)
            }
        };
        tokio::select! {
            res = &mut server => {
                background.cancel();
                return res.map_err(std::io::Error::other)?;
            }
            _ = stop.cancelled() => {}
            _ = shutdown_signal() => {}
        }
        drain(&state, handle.as_ref(), accept_stop.as_ref()).await;
        background.cancel();
        let _ = server.await;
        Ok(())
    }
}

/// The pluggable parts: Redis-backed for a cluster, in-process for a single node.
struct Backends {
    broker: Arc<dyn Broker>,
    directory: Arc<dyn Directory>,
    presence: Arc<dyn Presence>,
    redis_pool: Option<deadpool_redis::Pool>,
}

async fn redis_backends(
    settings: &Settings,
    redis_url: &str,
    node_id: &str,
    keys: &Keys,
    metrics: &Metrics,
    inbound: &Arc<dyn Inbound>,
) -> Result<Backends> {
    let mut cfg = deadpool_redis::Config::from_url(redis_url.to_owned());
    let mut pool_cfg = deadpool_redis::PoolConfig::new(settings.redis.pool_size.max(1));
    pool_cfg.timeouts.wait = Some(Duration::from_secs(2));
    pool_cfg.timeouts.create = Some(Duration::from_secs(2));
    pool_cfg.timeouts.recycle = Some(Duration::from_secs(2));
    cfg.pool = Some(pool_cfg);
    let pool = cfg
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| startup_err("creating the redis pool", e))?;
    let broker = RedisBroker::start(
        RedisBrokerOptions {
            url: redis_url.to_owned(),
            control_channel: keys.control_channel(),
            probe_channel: keys.probe_channel(node_id),
            reconnect_min: ms(settings.redis.reconnect_min_ms),
            reconnect_max: ms(settings.redis.reconnect_max_ms),
            probe_interval: ms(settings.redis.probe_interval_ms),
            probe_timeout: ms(settings.redis.probe_timeout_ms),
            publish_queue: 65_536,
            control_log: keys.control_log(),
            control_log_max: settings.redis.control_log_max,
            command_timeout: ms(settings.redis.command_timeout_ms.max(1)),
        },
        pool.clone(),
        Arc::downgrade(inbound),
        metrics.clone(),
    )
    .await
    .map_err(|e| startup_err("connecting to redis", e))?;
    Ok(Backends {
        broker,
        directory: Arc::new(RedisDirectory::new(pool.clone(), keys.clone())),
        presence: Arc::new(RedisPresence::new(
            pool.clone(),
            keys.clone(),
            node_id,
            ms(settings.presence.node_ttl_ms),
            ms(settings.presence.offline_grace_ms),
            settings.redis.control_log_max,
        )),
        redis_pool: Some(pool),
    })
}

fn memory_backends(settings: &Settings, keys: &Keys, inbound: &Arc<dyn Inbound>) -> Backends {
    let broker = Arc::new(MemoryBroker::new());
    broker.attach(Arc::downgrade(inbound));
    Backends {
        broker: broker.clone(),
        directory: Arc::new(MemoryDirectory::new()),
        presence: Arc::new(MemoryPresence::new(
            broker,
            keys.control_channel(),
            ms(settings.presence.offline_grace_ms),
        )),
        redis_pool: None,
    }
}

async fn drain(
    state: &AppState,
    handle: Option<&ServerHandle>,
    accept: Option<&CancellationToken>,
) {
    let deadline = Instant::now() + Duration::from_secs(state.settings.shutdown.drain_timeout_secs);
    tracing::info!(node = %state.node_id, "draining");
    state.draining.store(true, Ordering::Release);
    // Sessions finish the frame they are handling (a send in flight is stored and acked) and
    // then close with 1012 so clients reconnect elsewhere and resume.
    state.hub.close_all(CloseReason::ServiceRestart);
    state.tracker.close();
    let _ = tokio::time::timeout_at(deadline.into(), state.tracker.wait()).await;
    while state.hub.session_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give close frames a moment to be written before connections are torn down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(handle) = handle {
        handle.stop(true).await;
    }
    if let Some(accept) = accept {
        accept.cancel();
    }
    // Sessions are closed: clear what this node still has registered and deregister it, so its
    // users go offline promptly (after the grace period) instead of when its heartbeat expires.
    Announcer::new(state).stop().await;
    state.broker.shutdown();
    tracing::info!(node = %state.node_id, "drained");
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
