//! `datastorage migrate`.

use anyhow::Context;

/// Applies pending migrations, then makes the search index of vectors of `dimension` (the deployment's
/// `embedding.dimension`) when it is missing. Returns the migrations applied.
pub async fn migrate(database_url: &str, dimension: usize) -> anyhow::Result<Vec<String>> {
    let applied = ds_store_pg::run_migrations(database_url)
        .await
        .context("applying migrations")?;
    if ds_store_pg::ensure_vector_index(database_url, dimension)
        .await
        .with_context(|| format!("making the search index of vectors of {dimension} dimensions"))?
    {
        tracing::info!(
            dimension,
            index = %ds_store_pg::vector_index_name(dimension),
            "made the search index of the configured embedding dimension"
        );
    }
    Ok(applied)
}
