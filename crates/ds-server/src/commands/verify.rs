//! `datastorage verify`: what an auditor runs (contract §8). Offline, from an export, signed
//! checkpoints and the log's verifier keys: every leaf recomputed, the tree rebuilt, every signed
//! root compared. Online, against a running service and checkpoints saved earlier: the consistency
//! proof from each to today's signed tree, and the inclusion of sampled records, each recomputed from
//! its content. Exit codes: 0 verified, 1 tampered (the findings say what and where), 2 usage or I/O.

use ds_tlog::note::{CheckpointError, CheckpointVerifier, SignedCheckpoint};
use ds_tlog::tree::{check_consistency, check_inclusion};
use ds_tlog::verify::{ExportLine, Report, Verifier};
use ds_tlog::{Hash, hash_from_base64};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// What a verification concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything checked; a summary of what.
    Verified(String),
    /// Findings, each naming a record or a size.
    Tampered(Vec<String>),
}

/// A usage or I/O error (exit 2): the verification could not be carried out.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

fn unusable(what: impl std::fmt::Display) -> Unusable {
    Unusable(what.to_string())
}

/// The log's origin and verifier keys as a service's configuration has them: `log.origin`,
/// `log.verifier_keys` (earlier keys), and the verifier key of `log.signing_key_file` when that file
/// is readable here. `lookup` answers a configuration key by its environment variable's name.
pub fn configured(lookup: &dyn Fn(&str) -> Option<String>) -> (Option<String>, Vec<String>) {
    let origin = lookup("DATASTORAGE_LOG_ORIGIN");
    let mut keys = crate::config::list(lookup, "DATASTORAGE_LOG_VERIFIER_KEYS");
    if let Some(path) = lookup("DATASTORAGE_LOG_SIGNING_KEY_FILE")
        && let Ok(private) = std::fs::read_to_string(path)
        && let Ok(signer) = ds_tlog::note::CheckpointSigner::new(
            origin
                .as_deref()
                .unwrap_or(crate::config::DEFAULT_LOG_ORIGIN),
            &private,
        )
    {
        keys.push(signer.verifier_key().to_owned());
    }
    (origin, keys)
}

/// The log's verifier keys (note encoding): from `--key` and the lines of `--keys-file`.
pub fn verifier(
    origin: &str,
    keys: &[String],
    keys_file: Option<&Path>,
) -> Result<CheckpointVerifier, Unusable> {
    let mut all = keys.to_vec();
    if let Some(path) = keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| unusable(format!("cannot read {}: {e}", path.display())))?;
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if all.is_empty() {
        return Err(unusable(
            "no verifier key: give --key (the log's verifier key, and every earlier one) or --keys-file",
        ));
    }
    CheckpointVerifier::new(origin, &all).map_err(unusable)
}

/// Opens a signed checkpoint: unreadable is `Unusable`, not signed by a known key is a finding.
fn open(
    keys: &CheckpointVerifier,
    what: &str,
    note: &[u8],
) -> Result<Result<SignedCheckpoint, String>, Unusable> {
    match keys.open(note) {
        Ok(c) => Ok(Ok(c)),
        Err(CheckpointError::Malformed(m)) => Err(unusable(format!("{what}: {m}"))),
        Err(e) => Ok(Err(format!("{what}: {e}"))),
    }
}

fn read_checkpoints(
    keys: &CheckpointVerifier,
    paths: &[PathBuf],
) -> Result<(Vec<SignedCheckpoint>, Vec<String>), Unusable> {
    let mut good = Vec::new();
    let mut findings = Vec::new();
    for p in paths {
        let note =
            std::fs::read(p).map_err(|e| unusable(format!("cannot read {}: {e}", p.display())))?;
        match open(keys, &format!("checkpoint {}", p.display()), &note)? {
            Ok(c) => good.push(c),
            Err(f) => findings.push(f),
        }
    }
    Ok((good, findings))
}

fn verdict(report: Report, mut findings: Vec<String>) -> Verdict {
    findings.extend(report.findings.iter().map(ToString::to_string));
    if findings.is_empty() && report.verified() {
        let mut summary = format!(
            "verified: {} leaves; signed roots match at tree sizes {:?}",
            report.size, report.verified_sizes
        );
        // Records gone by policy are not tampering: said, not hidden.
        for p in &report.purges {
            summary.push_str(&format!("; {p}"));
        }
        Verdict::Verified(summary)
    } else if findings.is_empty() {
        Verdict::Tampered(vec![format!(
            "no signed checkpoint has a size within the export's {} leaves: nothing could be verified",
            report.size
        )])
    } else {
        Verdict::Tampered(findings)
    }
}

/// Offline: an export (`-` for standard input) against signed checkpoints; `retention`: the
/// retention the auditor expects of every purge (`--retention-days`).
pub fn offline(
    export: &Path,
    checkpoints: &[PathBuf],
    keys: &CheckpointVerifier,
    max_skew: chrono::Duration,
    retention: Option<chrono::Duration>,
) -> Result<Verdict, Unusable> {
    if checkpoints.is_empty() {
        return Err(unusable(
            "give at least one --checkpoint (a signed checkpoint saved from GET /api/v1/log/checkpoint)",
        ));
    }
    let (signed, findings) = read_checkpoints(keys, checkpoints)?;
    let reader: Box<dyn BufRead> = if export == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(export)
            .map_err(|e| unusable(format!("cannot read {}: {e}", export.display())))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, f))
    };
    let mut v = Verifier::new(&signed, max_skew);
    if let Some(retention) = retention {
        v = v.expect_retention(retention);
    }
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| unusable(format!("reading the export: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line)
            .map_err(|e| unusable(format!("export line {}: {e}", n + 1)))?;
        v.push(&parsed)
            .map_err(|e| unusable(format!("export line {}: {e}", n + 1)))?;
    }
    Ok(verdict(v.finish(), findings))
}

/// Online: the service at `url` against checkpoints saved earlier; `samples` records checked for
/// inclusion in today's signed tree.
pub async fn online(
    url: &str,
    token: Option<&str>,
    checkpoints: &[PathBuf],
    keys: &CheckpointVerifier,
    samples: u64,
) -> Result<Verdict, Unusable> {
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(unusable)?;
    let get = |path: String| {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req
                .send()
                .await
                .map_err(|e| unusable(format!("GET {path}: {e}")))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| unusable(format!("GET {path}: {e}")))?;
            Ok::<_, Unusable>((status, body))
        }
    };
    let (saved, mut findings) = read_checkpoints(keys, checkpoints)?;
    let (status, body) = get("/api/v1/log/checkpoint".into()).await?;
    if !status.is_success() {
        return Err(unusable(format!(
            "GET /api/v1/log/checkpoint answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let latest = match open(keys, "the service's latest checkpoint", &body)? {
        Ok(c) => c,
        Err(f) => return Ok(Verdict::Tampered(vec![f])),
    };
    let mut checked = Vec::new();
    for s in &saved {
        if s.size > latest.size {
            findings.push(format!(
                "the log ends at size {} but a saved checkpoint has size {}: the log was truncated",
                latest.size, s.size
            ));
            continue;
        }
        if s.size == 0 {
            continue;
        }
        let (status, body) = get(format!(
            "/api/v1/log/proof/consistency?from={}&to={}",
            s.size, latest.size
        ))
        .await?;
        let proof = if status.is_success() {
            hashes(&body)?
        } else {
            findings.push(format!(
                "the service has no consistency proof from the saved checkpoint of size {} to {} ({status}): history was rewritten",
                s.size, latest.size
            ));
            continue;
        };
        if check_consistency(&proof, s.size, s.root, latest.size, latest.root) {
            checked.push(s.size);
        } else {
            findings.push(format!(
                "the signed tree of size {} does not extend the saved checkpoint of size {}: history was rewritten between sizes {} and {}",
                latest.size, s.size, s.size, latest.size
            ));
        }
    }
    let mut sampled = 0;
    for index in sample(latest.size, samples) {
        let (status, body) = get(format!("/api/v1/audit/export?cursor={index}&limit=1")).await?;
        if !status.is_success() {
            return Err(unusable(format!("GET export at {index} answered {status}")));
        }
        let line: ExportLine =
            serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap_or_default())
                .map_err(|e| unusable(format!("export line at logIndex {index}: {e}")))?;
        if line.log_index != index {
            findings.push(format!(
                "the service exports logIndex {} where {index} was asked: leaves are missing or reordered",
                line.log_index
            ));
            continue;
        }
        let Some(leaf) = line.record_leaf_hash() else {
            findings.push(format!(
                "logIndex {index} ({} {}): the log has the record but the store does not: deleted",
                line.kind, line.id
            ));
            continue;
        };
        let (status, body) = get(format!(
            "/api/v1/log/proof/inclusion?kind={}&id={}&treeSize={}",
            line.kind, line.id, latest.size
        ))
        .await?;
        let ok = status.is_success() && {
            let p: serde_json::Value = serde_json::from_slice(&body).map_err(unusable)?;
            let proof = hash_list(&p["hashes"])?;
            p["logIndex"].as_u64() == Some(index)
                && check_inclusion(&proof, latest.size, latest.root, index, leaf)
        };
        if ok {
            sampled += 1;
        } else {
            findings.push(format!(
                "logIndex {index} ({} {}): the record as stored is not the leaf in the signed tree of size {}: changed after it was logged",
                line.kind, line.id, latest.size
            ));
        }
    }
    if findings.is_empty() {
        Ok(Verdict::Verified(format!(
            "verified: the signed tree of size {} extends the saved checkpoints of sizes {checked:?}; {sampled} sampled records are in it as stored",
            latest.size
        )))
    } else {
        Ok(Verdict::Tampered(findings))
    }
}

/// `n` log indexes spread over a tree of `size` leaves, the first and the last included.
fn sample(size: u64, n: u64) -> Vec<u64> {
    if size == 0 || n == 0 {
        return Vec::new();
    }
    let n = n.min(size);
    let mut out: Vec<u64> = (0..n)
        .map(|k| {
            if n == 1 {
                size - 1
            } else {
                k * (size - 1) / (n - 1)
            }
        })
        .collect();
    out.dedup();
    out
}

fn hashes(body: &[u8]) -> Result<Vec<Hash>, Unusable> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(unusable)?;
    hash_list(&v["hashes"])
}

fn hash_list(v: &serde_json::Value) -> Result<Vec<Hash>, Unusable> {
    v.as_array()
        .ok_or_else(|| unusable("a proof without hashes"))?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(hash_from_base64)
                .ok_or_else(|| unusable("a proof hash that is not base64 SHA-256"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{configured, sample};

    #[test]
    fn the_configuration_gives_the_origin_the_earlier_keys_and_the_signing_keys_verifier() {
        let (private, public) = ds_tlog::note::generate_key("k", [3; 32]).unwrap();
        let path = std::env::temp_dir().join(format!("ds-verify-key-{}", std::process::id()));
        std::fs::write(&path, private).unwrap();
        let env = std::collections::HashMap::from([
            ("DATASTORAGE_LOG_ORIGIN", "example/log".to_owned()),
            (
                "DATASTORAGE_LOG_VERIFIER_KEYS",
                "old+00000001+AQ, older+00000002+AQ".to_owned(),
            ),
            (
                "DATASTORAGE_LOG_SIGNING_KEY_FILE",
                path.display().to_string(),
            ),
        ]);
        let (origin, keys) = configured(&|k| env.get(k).cloned());
        assert_eq!(origin.as_deref(), Some("example/log"));
        assert_eq!(
            keys,
            vec![
                "old+00000001+AQ".to_owned(),
                "older+00000002+AQ".to_owned(),
                public
            ]
        );
        assert_eq!(configured(&|_| None), (None, Vec::new()));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn samples_spread_over_the_tree_with_both_ends() {
        assert_eq!(sample(0, 5), Vec::<u64>::new());
        assert_eq!(sample(1, 5), vec![0]);
        assert_eq!(sample(10, 3), vec![0, 4, 9]);
        assert_eq!(sample(3, 10), vec![0, 1, 2]);
        assert_eq!(sample(100, 1), vec![99]);
    }
}
