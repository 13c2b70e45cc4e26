//! `datastorage serve`.

use crate::config::Config;

/// `datastorage serve`: starts, serves until SIGTERM/SIGINT, shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::start(config).await?.until_signal().await
}
