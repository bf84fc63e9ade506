//! `confab`: load settings, set up logging, build the node, run it until SIGTERM.

use confab_gateway::{telemetry, Application, Settings};
use secrecy::ExposeSecret;

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
