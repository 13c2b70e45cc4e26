//! `datastorage`: the audit-trail store of the Kubernaut platform.

use clap::{Parser, Subcommand};
use ds_server::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "datastorage",
    version,
    about = "The audit-trail store of the Kubernaut platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (8080) and metrics (9090); the default.
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("DATASTORAGE_LOG_FORMAT")
        .map(|f| f != "text")
        .unwrap_or(true);
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    // Before any HTTP client exists: the process's one TLS stack (rustls + ring).
    ds_embed_openai::install_tls_provider();
    let config = Config::from_env()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let applied = ds_server::migrate(&config.database_url).await?;
            tracing::info!(applied = ?applied, "migrations applied");
        }
        Command::Serve => ds_server::start(config).await?.until_signal().await?,
    }
    Ok(())
}
