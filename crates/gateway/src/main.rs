//! `confab`: load settings, set up logging, build the node, run it until SIGTERM.

use confab_gateway::{telemetry, Application, Settings};
use secrecy::ExposeSecret;

/// jemalloc instead of glibc's malloc. Sessions are created and dropped on different threads
/// than much of what they allocate is freed on, and glibc's arenas spent ~13% of a node's CPU
/// in malloc/free (profile of 12,000 connects). Measured with `scripts/bench-ab.sh`, 2 rounds
/// each: node CPU per connect -14%, idle RSS per connection 20.3 → 19.8 KiB, fan-out
/// deliveries per CPU-s +4-5%. (mimalloc was measured too: faster, but +33% idle RSS.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("confab: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let embedded = settings.database.url.expose_secret().is_empty();
    let host = settings.server.host.clone();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("confab: start-up failed: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let port = app.port();
    println!("confab listening on http://{host}:{port}");
    if embedded {
        println!("  single node, embedded store (set CONFAB__DATABASE__URL and CONFAB__REDIS__URL to cluster)");
    }
    println!("  register: curl -s -XPOST http://{host}:{port}/api/v1/users -H 'content-type: application/json' -d '{{\"username\":\"alice\",\"password\":\"correct horse\"}}'");
    println!(
        "  connect:  websocat 'ws://{host}:{port}/ws?token=<token from POST /api/v1/sessions>'"
    );
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab: server error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
