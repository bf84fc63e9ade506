//! Prometheus metrics of one node, in a registry of its own (several nodes share a test process).
//! Names follow Prometheus conventions: `confab_` prefix, base units, `_total` counters. Labels
//! are bounded (route patterns, status codes, error codes, frame types): never a user or thread.

use actix_web::http::Method;
use confab_protocol::ErrorCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// All of a node's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections open now.
    pub connections_open: IntGauge,
    /// WebSocket sessions ever opened.
    pub sessions_opened: IntCounter,
    /// WebSocket upgrades refused: admission control, or a session that could not start.
    pub connects_refused: IntCounter,
    /// Client frames received, by frame type.
    pub frames_received: IntCounterVec,
    /// Frames written to WebSocket sockets (messages, replies, events, errors).
    pub frames_sent: IntCounter,
    /// Messages stored (acknowledged) by this node.
    pub messages_stored: IntCounter,
    /// Message frames delivered to local sessions.
    pub deliveries: IntCounter,
    /// Requests refused, by error code.
    pub refused: IntCounterVec,
    /// Publish (after commit) → handed to local sessions, seconds.
    pub fanout_latency: Histogram,
    /// The send transaction, seconds.
    pub store_latency: Histogram,
    /// Sends stored per group commit (one batch writer turn).
    pub store_batch_size: Histogram,
    /// One group commit's time in the database (a batch writer turn), seconds.
    pub store_commit: Histogram,
    /// Thread channels this node is subscribed to.
    pub subscriptions: IntGauge,
    /// Pub/sub reconnects.
    pub pubsub_reconnects: IntCounter,
    /// Pub/sub stalls detected by the liveness probe.
    pub pubsub_stalls: IntCounter,
    /// Control announcements read back from the control log after a pub/sub reconnect.
    pub control_replayed: IntCounter,
    /// Pub/sub reconnects after which the control log no longer held everything missed.
    pub control_lost: IntCounter,
    /// Pub/sub reconnects given up because the control log could not be read back (retried).
    pub control_replay_failures: IntCounter,
    /// Publishes that failed (retried in the background, repaired by sweeps).
    pub publish_failures: IntCounter,
    /// Gap repairs from the database (node-side and per-session).
    pub gap_repairs: IntCounterVec,
    /// Sessions closed because they did not read fast enough.
    pub slow_consumer_disconnects: IntCounter,
    /// Sessions closed, by close code.
    pub disconnects: IntCounterVec,
    /// Keys looked up by the batched connect-time reads, by kind.
    pub db_lookups: IntCounterVec,
    /// Database queries those lookups made, by kind.
    pub db_lookup_queries: IntCounterVec,
    /// HTTP requests by route pattern, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request duration by route pattern, seconds.
    pub http_duration: HistogramVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        // Metric definitions are static; an invalid one is a programming error caught by tests.
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    /// Create and register every metric, labelled with the node id.
    #[allow(clippy::panic)]
    pub fn new(node_id: &str) -> Self {
        let registry = must(Registry::new_custom(
            None,
            Some(std::iter::once(("node".to_string(), node_id.to_string())).collect()),
        ));
        let lat_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let m = Self {
            connections_open: must(IntGauge::new(
                "confab_connections_open",
                "WebSocket connections open now",
            )),
            sessions_opened: must(IntCounter::new(
                "confab_sessions_opened_total",
                "WebSocket sessions opened",
            )),
            connects_refused: must(IntCounter::new(
                "confab_connects_refused_total",
                "WebSocket upgrades refused: admission control, or a session that could not start",
            )),
            frames_received: must(IntCounterVec::new(
                Opts::new(
                    "confab_frames_received_total",
                    "Client frames received by type",
                ),
                &["type"],
            )),
            frames_sent: must(IntCounter::new(
                "confab_frames_sent_total",
                "Frames written to WebSocket sockets",
            )),
            messages_stored: must(IntCounter::new(
                "confab_messages_stored_total",
                "Messages durably stored and acknowledged",
            )),
            deliveries: must(IntCounter::new(
                "confab_messages_delivered_total",
                "Message frames delivered to local sessions",
            )),
            refused: must(IntCounterVec::new(
                Opts::new(
                    "confab_requests_refused_total",
                    "Requests refused by error code",
                ),
                &["code"],
            )),
            fanout_latency: must(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_fanout_latency_seconds",
                    "Publish after commit to hand-off to local sessions",
                )
                .buckets(lat_buckets.clone()),
            )),
            store_latency: must(Histogram::with_opts(
                HistogramOpts::new("confab_store_latency_seconds", "Send transaction duration")
                    .buckets(lat_buckets.clone()),
            )),
            store_batch_size: must(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_store_batch_size",
                    "Sends stored per group commit (one batch writer turn)",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                ]),
            )),
            store_commit: must(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_store_commit_seconds",
                    "One group commit's time in the database: the batch statement, its locks, \
                     commit and WAL flush (one batch writer turn)",
                )
                .buckets(lat_buckets.clone()),
            )),
            subscriptions: must(IntGauge::new(
                "confab_redis_subscriptions",
                "Thread channels subscribed",
            )),
            pubsub_reconnects: must(IntCounter::new(
                "confab_pubsub_reconnects_total",
                "Pub/sub reconnects",
            )),
            pubsub_stalls: must(IntCounter::new(
                "confab_pubsub_stalls_total",
                "Pub/sub stalls detected by the liveness probe",
            )),
            control_replayed: must(IntCounter::new(
                "confab_control_replayed_total",
                "Control announcements read back from the control log after a pub/sub reconnect",
            )),
            control_lost: must(IntCounter::new(
                "confab_control_lost_total",
                "Pub/sub reconnects after which the control log no longer held every announcement missed (sessions restarted)",
            )),
            control_replay_failures: must(IntCounter::new(
                "confab_control_replay_failures_total",
                "Pub/sub reconnects dropped and retried because the control log could not be read back",
            )),
            publish_failures: must(IntCounter::new(
                "confab_publish_failures_total",
                "Failed publishes (retried and repaired)",
            )),
            gap_repairs: must(IntCounterVec::new(
                Opts::new("confab_gap_repairs_total", "Gaps filled from the database"),
                &["scope"],
            )),
            slow_consumer_disconnects: must(IntCounter::new(
                "confab_slow_consumer_disconnects_total",
                "Sessions closed for not reading",
            )),
            disconnects: must(IntCounterVec::new(
                Opts::new("confab_disconnects_total", "Sessions closed by close code"),
                &["code"],
            )),
            db_lookups: must(IntCounterVec::new(
                Opts::new(
                    "confab_db_lookups_total",
                    "Keys asked of the batched lookups (token, threads, heads)",
                ),
                &["kind"],
            )),
            db_lookup_queries: must(IntCounterVec::new(
                Opts::new(
                    "confab_db_lookup_queries_total",
                    "Database queries made by the batched lookups",
                ),
                &["kind"],
            )),
            http_requests: must(IntCounterVec::new(
                Opts::new("confab_http_requests_total", "HTTP requests"),
                &["route", "method", "status"],
            )),
            http_duration: must(HistogramVec::new(
                HistogramOpts::new("confab_http_request_duration_seconds", "HTTP request time")
                    .buckets(lat_buckets),
                &["route"],
            )),
            registry,
        };
        m.register_all();
        // Known label values start at 0, so `rate()` and alerts see a series before the first
        // event instead of a missing one.
        for code in ErrorCode::ALL {
            m.refused.with_label_values(&[code.as_str()]);
        }
        for scope in ["node", "session"] {
            m.gap_repairs.with_label_values(&[scope]);
        }
        for kind in ["token", "threads", "heads"] {
            m.db_lookups.with_label_values(&[kind]);
            m.db_lookup_queries.with_label_values(&[kind]);
        }
        m
    }

    #[allow(clippy::panic)]
    fn register_all(&self) {
        let r = &self.registry;
        must(r.register(Box::new(self.connections_open.clone())));
        must(r.register(Box::new(self.sessions_opened.clone())));
        must(r.register(Box::new(self.connects_refused.clone())));
        must(r.register(Box::new(self.frames_received.clone())));
        must(r.register(Box::new(self.frames_sent.clone())));
        must(r.register(Box::new(self.messages_stored.clone())));
        must(r.register(Box::new(self.deliveries.clone())));
        must(r.register(Box::new(self.refused.clone())));
        must(r.register(Box::new(self.fanout_latency.clone())));
        must(r.register(Box::new(self.store_latency.clone())));
        must(r.register(Box::new(self.store_batch_size.clone())));
        must(r.register(Box::new(self.store_commit.clone())));
        must(r.register(Box::new(self.subscriptions.clone())));
        must(r.register(Box::new(self.pubsub_reconnects.clone())));
        must(r.register(Box::new(self.pubsub_stalls.clone())));
        must(r.register(Box::new(self.control_replayed.clone())));
        must(r.register(Box::new(self.control_lost.clone())));
        must(r.register(Box::new(self.control_replay_failures.clone())));
        must(r.register(Box::new(self.publish_failures.clone())));
        must(r.register(Box::new(self.gap_repairs.clone())));
        must(r.register(Box::new(self.slow_consumer_disconnects.clone())));
        must(r.register(Box::new(self.disconnects.clone())));
        must(r.register(Box::new(self.db_lookups.clone())));
        must(r.register(Box::new(self.db_lookup_queries.clone())));
        must(r.register(Box::new(self.http_requests.clone())));
        must(r.register(Box::new(self.http_duration.clone())));
    }

    /// The `method` label of an HTTP request: the standard methods by name, anything else
    /// (extension methods are legal HTTP) as `other`, so clients cannot mint label values.
    pub fn method_label(method: &Method) -> &'static str {
        match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::CONNECT => "CONNECT",
            Method::TRACE => "TRACE",
            _ => "other",
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
