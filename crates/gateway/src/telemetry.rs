//! Logging set-up: tracing with a filter from settings, plain or JSON.

use crate::config::LogSettings;
use tracing_subscriber::{fmt, EnvFilter};

/// Install the global subscriber (once per process; later calls are ignored so tests can call it).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = if settings.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
