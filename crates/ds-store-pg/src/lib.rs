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
mod reembed;
mod replica;
mod retention;
mod rows;
mod schema;
mod store;
mod tlog;
mod write;

pub use error::{PgStoreError, unavailable_reason};
pub use group::GroupCommitSettings;
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
/// Taken while a vector index is built; not [`MIGRATION_LOCK`], whose blocking waiters hold a
/// snapshot that `CREATE INDEX CONCURRENTLY` would wait for.
pub const VECTOR_INDEX_LOCK: i64 = MIGRATION_LOCK + 1;

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

/// The name of the HNSW index of the vectors of `dimension`.
pub fn vector_index_name(dimension: usize) -> String {
    format!("embeddings_hnsw_{dimension}")
}

#[derive(diesel::QueryableByName)]
struct IndexName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// The dimensions that have a valid HNSW index (`embeddings_hnsw_<dimension>`), ascending.
pub(crate) async fn vector_indexes(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<usize>, PgStoreError> {
    let names: Vec<IndexName> = diesel_async::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT c.relname::text AS name FROM pg_index x \
         JOIN pg_class c ON c.oid = x.indexrelid \
         WHERE x.indrelid = 'embeddings'::regclass AND x.indisvalid \
           AND c.relname ~ '^embeddings_hnsw_[0-9]+$' ORDER BY 1",
        ),
        conn,
    )
    .await?;
    let mut dims: Vec<usize> = names
        .iter()
        .filter_map(|n| n.name.strip_prefix("embeddings_hnsw_")?.parse().ok())
        .collect();
    dims.sort_unstable();
    Ok(dims)
}

/// Makes the HNSW index of the vectors of `dimension` when it is missing (or left invalid by a build
/// that failed): a partial index over `embedding::vector(dimension)` for the rows of that dimension,
/// built `CONCURRENTLY`, so writes go on meanwhile. Needs the table's owner (`datastorage migrate`
/// runs it). Returns whether it built one.
pub async fn ensure_vector_index(
    database_url: &str,
    dimension: usize,
) -> Result<bool, PgStoreError> {
    use diesel_async::SimpleAsyncConnection;
    if !(1..=16_000).contains(&dimension) {
        return Err(PgStoreError::Migration(format!(
            "an embedding dimension is 1 to 16000, not {dimension}"
        )));
    }
    let mut conn = connect::establish(database_url).await?;
    if vector_indexes(&mut conn).await?.contains(&dimension) {
        return Ok(false);
    }
    // One builder at a time, across replicas starting together: the others would see the index being
    // built as invalid and drop it. The lock is taken by polling, so that a waiting session holds no
    // snapshot that CREATE INDEX CONCURRENTLY would wait for (a blocking wait would deadlock).
    #[derive(diesel::QueryableByName)]
    struct Got {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        got: bool,
    }
    loop {
        let got: Got = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(format!(
                "SELECT pg_try_advisory_lock({VECTOR_INDEX_LOCK}) AS got"
            )),
            &mut conn,
        )
        .await?;
        if got.got {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let built = build_vector_index(&mut conn, dimension).await;
    let unlocked = conn
        .batch_execute(&format!("SELECT pg_advisory_unlock({VECTOR_INDEX_LOCK})"))
        .await;
    let built = built?;
    unlocked?;
    Ok(built)
}

/// [`ensure_vector_index`] under the lock: checks again (another replica may have built it
/// meanwhile), then builds.
async fn build_vector_index(
    conn: &mut AsyncPgConnection,
    dimension: usize,
) -> Result<bool, PgStoreError> {
    use diesel_async::SimpleAsyncConnection;
    if vector_indexes(conn).await?.contains(&dimension) {
        return Ok(false);
    }
    let name = vector_index_name(dimension);
    // An invalid index of that name (a concurrent build that failed) is dropped and built again.
    // One statement per call: several in one simple query form a transaction block, which
    // CONCURRENTLY refuses.
    conn.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        .await?;
    conn.batch_execute(&format!(
        "CREATE INDEX CONCURRENTLY {name} ON embeddings \
         USING hnsw ((embedding::vector({dimension})) vector_cosine_ops) \
         WHERE vector_dims(embedding) = {dimension}"
    ))
    .await?;
    Ok(true)
}

/// The versions of the embedded migrations.
pub fn known_migrations() -> Vec<String> {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
        .unwrap_or_default()
}
