//! `datastorage jobs list|retry`: the embedding jobs that did not succeed, and sending them round again.

use super::command_store;
use crate::config::Config;
use anyhow::Context;
use ds_domain::ports::AuditStore;

/// `datastorage jobs list`: open and parked embedding jobs (or parked only), newest first.
pub async fn jobs_list(
    config: &Config,
    parked_only: bool,
    limit: usize,
) -> anyhow::Result<Vec<ds_domain::jobs::JobInfo>> {
    let store = command_store(config)?;
    let jobs = store
        .list_jobs(parked_only, limit)
        .await
        .context("listing the embedding jobs")?;
    store.close().await;
    Ok(jobs)
}

/// `datastorage jobs retry`: re-queues parked jobs (all, or those whose digest, in hex, is given).
pub async fn jobs_retry(config: &Config, digests: Option<&[String]>) -> anyhow::Result<u64> {
    let parsed = digests
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    let bytes = hex::decode(d.trim())
                        .with_context(|| format!("{d:?} is not a job digest (64 hex digits)"))?;
                    ds_domain::digest::Sha256Digest::try_from(bytes.as_slice())
                        .map_err(|_| anyhow::anyhow!("{d:?} is not a job digest (64 hex digits)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    let store = command_store(config)?;
    let n = store
        .retry_parked(parsed.as_deref())
        .await
        .context("re-queueing parked jobs")?;
    store.close().await;
    Ok(n)
}
