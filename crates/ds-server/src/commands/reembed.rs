//! `datastorage reembed [--finish]`: moving the stored records to another embedding model.

use super::command_store;
use crate::config::Config;
use crate::wiring::build_provider;
use anyhow::{Context, bail};
use ds_domain::AuditService;
use ds_domain::ports::AuditStore;
use std::sync::Arc;
use std::time::Duration;

/// `datastorage reembed`: after a change of embedding model, queues every record that has no vector of
/// the configured model for the embedding workers (a vector of that model already stored for the same
/// text is linked at once); each keeps its vector of the model it came from, so that replicas still
/// on that model find it until the switch. Returns how many records were queued or linked. Safe to
/// run while the service serves, and to run again (records already done or queued are skipped).
pub async fn reembed(config: Config, page: usize) -> anyhow::Result<u64> {
    let service = reembed_service(&config).await?;
    queue_all(&service, page).await
}

/// `datastorage reembed --finish`: the switch, once every replica runs the configured model. Refused
/// while a record received in the last `idle_for` was embedded with another model (a replica still
/// runs it). Queues what is left (records written by the old model's replicas since `reembed`), then
/// drops the links kept for the earlier models, their jobs and their vectors (see
/// [`ds_domain::ports::AuditStore::finish_switch`]). Safe to run again.
pub async fn reembed_finish(
    config: Config,
    page: usize,
    idle_for: Duration,
) -> anyhow::Result<(u64, ds_domain::ports::Switched)> {
    let service = reembed_service(&config).await?;
    let model = service.embedder().model_id().to_owned();
    if let Some(other) = service.other_model_in_use(idle_for).await? {
        bail!(
            "a record received in the last {}s was embedded with `{other}`: a replica still runs it. Finish the switch to `{model}` once every replica runs `{model}` (or give a shorter --idle-for)",
            idle_for.as_secs()
        );
    }
    let moved = queue_all(&service, page).await?;
    let switched = service
        .finish_switch()
        .await
        .context("removing the earlier models' links, jobs and vectors")?;
    tracing::info!(
        model = %model,
        queued = moved,
        kept_links = switched.kept_links,
        jobs = switched.jobs,
        vectors = switched.vectors,
        "switched to the configured embedding model"
    );
    Ok((moved, switched))
}

/// The service `reembed` works with: refused before the migrations and the search index of the
/// configured model's dimension.
async fn reembed_service(config: &Config) -> anyhow::Result<AuditService> {
    let store = command_store(config)?;
    let health = store.health().await.context("checking the database")?;
    if health.migrations_pending > 0 {
        bail!(
            "the database lacks {} migration(s): run `datastorage migrate` first",
            health.migrations_pending
        );
    }
    let provider = build_provider(config).await?;
    if !health.vector_indexes.contains(&provider.dimension()) {
        bail!(
            "embedding dimension mismatch: the provider `{}` gives {} dimensions, and the database has no search index for them (it has indexes for {:?}): run `datastorage migrate` with this configuration first",
            provider.model_id(),
            provider.dimension(),
            health.vector_indexes
        );
    }
    Ok(AuditService::with_options(
        Arc::new(store),
        provider,
        config.embedding_mode,
        config.embedding_failure_policy,
    ))
}

/// Every record without a vector of the service's model queued (or linked), `page` a transaction.
async fn queue_all(service: &AuditService, page: usize) -> anyhow::Result<u64> {
    let model = service.embedder().model_id().to_owned();
    let mut after = 0;
    let mut moved = 0u64;
    loop {
        let (n, last) = service.reembed_page(after, page.max(1)).await?;
        moved += n as u64;
        match last {
            Some(id) => {
                after = id;
                tracing::info!(model = %model, queued = moved, up_to_id = id, "re-embedding: records queued");
            }
            None => break,
        }
    }
    Ok(moved)
}
