//! The subcommands of `datastorage` other than the configuration's: each a function `main.rs` calls.

mod jobs;
mod migrate;
mod reembed;
mod serve;
pub mod verify;

pub use jobs::{jobs_list, jobs_retry};
pub use migrate::migrate;
pub use reembed::{reembed, reembed_finish};
pub use serve::serve;

use crate::config::Config;
use anyhow::Context;
use ds_store_pg::{PgStore, PoolSettings};

/// A small pool for a command that runs once (`jobs`, `reembed`).
pub(crate) fn command_store(config: &Config) -> anyhow::Result<PgStore> {
    PgStore::new(
        &config.database_url,
        &PoolSettings {
            max_size: 2,
            wait_timeout: config.db_wait_timeout,
            statement_timeout: config.db_statement_timeout,
            ..PoolSettings::default()
        },
    )
    .context("creating the database pool")
}
