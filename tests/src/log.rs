//! The transparency log as tests read it: the signed checkpoint once it covers a size, the whole
//! export, and the offline verifier over them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use crate::{TestApp, log_key, until};
use ds_server::config::DEFAULT_LOG_ORIGIN;
use ds_server::verify::{Verdict, offline};
use ds_tlog::note::{CheckpointVerifier, SignedCheckpoint};
use ds_tlog::verify::ExportLine;
use std::path::{Path, PathBuf};

/// The verifier keys of the tests' log key.
pub fn keys() -> CheckpointVerifier {
    CheckpointVerifier::new(DEFAULT_LOG_ORIGIN, &[log_key().verifier_key.clone()]).unwrap()
}

/// The latest checkpoint, once one covers at least `size` leaves.
pub async fn checkpoint_covering(app: &TestApp, size: u64) -> (String, SignedCheckpoint) {
    let found = std::sync::Mutex::new(None);
    until(&format!("a signed checkpoint covers {size} leaves"), || {
        let found = &found;
        async move {
            let r = app
                .client
                .get(app.url("/api/v1/log/checkpoint"))
                .send()
                .await
                .unwrap();
            if r.status() != 200 {
                return false;
            }
            let note = r.text().await.unwrap();
            let c = keys().open(note.as_bytes()).unwrap();
            let covers = c.size >= size;
            *found.lock().unwrap() = Some((note, c));
            covers
        }
    })
    .await;
    found.into_inner().unwrap().unwrap()
}

pub async fn text(app: &TestApp, path: &str) -> (u16, String) {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub fn temp(name: &str, contents: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ds-integrity-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&p, contents).unwrap();
    p
}

/// The whole export, as a file.
pub async fn export(app: &TestApp) -> (PathBuf, Vec<ExportLine>) {
    let (status, body) = text(app, "/api/v1/audit/export").await;
    assert_eq!(status, 200, "{body}");
    let lines = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (temp("export.ndjson", &body), lines)
}

/// The offline verifier finds nothing wrong with `export` against `checkpoints`.
pub fn assert_verifies(export: &Path, checkpoints: &[&str]) {
    if let Verdict::Tampered(f) = verify_offline(export, checkpoints) {
        panic!("{f:?}");
    }
}

pub fn verify_offline(export: &Path, checkpoints: &[&str]) -> Verdict {
    verify_offline_expecting(export, checkpoints, None)
}

/// [`verify_offline`] for an auditor who knows the store keeps records `retention`
/// (`datastorage verify --retention-days`).
pub fn verify_offline_expecting(
    export: &Path,
    checkpoints: &[&str],
    retention: Option<chrono::Duration>,
) -> Verdict {
    let files: Vec<PathBuf> = checkpoints.iter().map(|c| temp("cp", c)).collect();
    offline(
        export,
        &files,
        &keys(),
        chrono::Duration::seconds(300),
        retention,
    )
    .unwrap()
}
