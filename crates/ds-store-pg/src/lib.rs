//! The PostgreSQL + pgvector adapter of the [`AuditStore`] port, on diesel-async with a deadpool pool.
//!
//! Architecture invariant: this is the only crate that knows SQL. The schema lives in the workspace's
//! `migrations/` folder, embedded in the binary by [`MIGRATIONS`].

pub mod connect;
mod error;
mod group;
mod jobs;
mod pgv;
mod query;
mod replica;
mod retention;
mod rows;
mod schema;
mod store;
mod tlog;
mod write;

pub use error::{PgStoreError, unavailable_reason};
pub use group::GroupCommit;
pub use pgv::Embedding;
pub use query::explain_list;
pub use replica::{ReplicaSettings, ReplicaStatus};
pub use retention::MAINTENANCE_LOCK;
pub use store::{PgStore, PoolSettings};
pub use tlog::SEQUENCER_LOCK;

use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// The migrations of `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Key of the advisory lock held while migrating, so that replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x6461_7461_7374_6f72; // "datastor"

/// Applies pending migrations under an advisory lock; returns the versions it applied.
///
/// Runs on a blocking thread (diesel's migration harness is synchronous), so it may be called from any
/// async runtime, the current-thread runtimes of actix included.
pub async fn run_migrations(database_url: &str) -> Result<Vec<String>, PgStoreError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>, PgStoreError> {
        // Connected on this blocking thread's runtime handle, TLS as the URL says.
        let conn = tokio::runtime::Handle::current().block_on(connect::establish(&url))?;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|e| PgStoreError::Migration(e.to_string()));
        let unlock = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .execute(&mut conn);
        let applied = applied?;
        unlock?;
        Ok(applied)
    })
    .await
    .map_err(|e| PgStoreError::Migration(format!("migration task failed: {e}")))?
}

/// The versions of the embedded migrations.
pub fn known_migrations() -> Vec<String> {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
        .unwrap_or_default()
}
