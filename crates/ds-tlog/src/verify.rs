//! The offline verifier: an export (every leaf in log order) checked against signed checkpoints.
//!
//! For each line it recomputes the leaf from the record and compares it with the leaf the log
//! holds; it rebuilds the tree from the log's leaves (a [`CompactRange`]: O(log n) memory, one pass)
//! and compares its root with every signed checkpoint whose size it passes; it checks that leaves
//! come in order without gaps and that no record was received long before one logged earlier. Each
//! finding names the record (log index, kind, id) or the tree size where the store and its log part.

use crate::leaf::Leaf;
use crate::note::SignedCheckpoint;
use crate::tree::CompactRange;
use crate::{Hash, hash_from_base64, hash_to_base64};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// One line of an export (`GET /api/v1/audit/export`, `application/x-ndjson`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportLine {
    /// The leaf's position in the log.
    pub log_index: u64,
    /// The leaf hash the log holds (base64).
    pub leaf_hash: String,
    pub kind: String,
    pub id: i64,
    /// When the store received the record (UTC, µs); absent when the record is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// Every field as written; `null` when the store no longer holds the record.
    pub record: Option<Map<String, Value>>,
}

impl ExportLine {
    /// The leaf of the record as this line carries it (`None` for a record gone): what the log must
    /// hold at `log_index` if the record is unchanged.
    pub fn record_leaf_hash(&self) -> Option<Hash> {
        let (record, received_at) = (self.record.as_ref()?, self.received_at.as_deref()?);
        Some(
            Leaf {
                kind: &self.kind,
                id: self.id,
                received_at,
                record,
            }
            .hash(),
        )
    }
}

/// Something the verifier found that an untampered store cannot produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The record is not what was logged.
    Changed {
        log_index: u64,
        kind: String,
        id: i64,
    },
    /// The log has the record's leaf; the store no longer has the record.
    Deleted {
        log_index: u64,
        kind: String,
        id: i64,
    },
    /// Leaves out of sequence: the export skips, repeats or reorders positions.
    OutOfSequence { expected: u64, found: u64 },
    /// Received long before a record that the log holds earlier: inserted back-dated.
    BackDated {
        log_index: u64,
        kind: String,
        id: i64,
        received_at: String,
        earlier_leaf_received_at: String,
    },
    /// The tree rebuilt from the export does not have the signed root at this size.
    RootMismatch {
        size: u64,
        last_matching: Option<u64>,
        signed: String,
        computed: String,
    },
    /// A checkpoint signs more leaves than the export holds.
    Truncated { size: u64, signed_size: u64 },
    /// The store no longer has the record and a purge entry names it, but the record was received
    /// after that purge's cutoff for its kind (no later than records logged before it): not
    /// removed by the policy the entry states.
    DeletedBeforeExpiry {
        log_index: u64,
        kind: String,
        id: i64,
        purge_log_index: u64,
        cutoff: String,
    },
    /// The store no longer has the record and a purge entry names it, but that purge's cutoff for
    /// its kind is later than the retention the auditor expects allows (`--retention-days`): the
    /// entry claims a shorter retention than the store's (one forged to explain a deletion would).
    ShorterRetention {
        log_index: u64,
        kind: String,
        id: i64,
        purge_log_index: u64,
        cutoff: String,
        purged_at: String,
        /// The expected retention, as the auditor gave it (`90 days`).
        expected: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Changed {
                log_index,
                kind,
                id,
            } => write!(
                f,
                "logIndex {log_index} ({kind} {id}): the record differs from its leaf in the log: changed after it was logged"
            ),
            Finding::Deleted {
                log_index,
                kind,
                id,
            } => write!(
                f,
                "logIndex {log_index} ({kind} {id}): the log has the record but the store does not: deleted"
            ),
            Finding::OutOfSequence { expected, found } => write!(
                f,
                "logIndex {found} where {expected} was expected: leaves are missing, repeated or reordered"
            ),
            Finding::BackDated {
                log_index,
                kind,
                id,
                received_at,
                earlier_leaf_received_at,
            } => write!(
                f,
                "logIndex {log_index} ({kind} {id}): received at {received_at}, long before a record logged earlier ({earlier_leaf_received_at}): inserted back-dated"
            ),
            Finding::RootMismatch {
                size,
                last_matching,
                signed,
                computed,
            } => {
                write!(
                    f,
                    "tree size {size}: the root of the exported log is {computed}, the signed checkpoint says {signed}: the log was rewritten"
                )?;
                match last_matching {
                    Some(m) => write!(f, " between sizes {m} and {size}"),
                    None => write!(f, " at or before size {size}"),
                }
            }
            Finding::Truncated { size, signed_size } => write!(
                f,
                "the log ends at size {size} but a signed checkpoint has size {signed_size}: the log was truncated"
            ),
            Finding::DeletedBeforeExpiry {
                log_index,
                kind,
                id,
                purge_log_index,
                cutoff,
            } => write!(
                f,
                "logIndex {log_index} ({kind} {id}): the store does not have the record; the purge at logIndex {purge_log_index} names it, but it was received after that purge's cutoff ({cutoff}): deleted"
            ),
            Finding::ShorterRetention {
                log_index,
                kind,
                id,
                purge_log_index,
                cutoff,
                purged_at,
                expected,
            } => write!(
                f,
                "logIndex {log_index} ({kind} {id}): the store does not have the record; the purge at logIndex {purge_log_index} names it, but its cutoff ({cutoff}) is less than the {expected} of retention you expect before that purge ({purged_at}): deleted"
            ),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Leaves read.
    pub size: u64,
    /// Sizes whose signed root matched the rebuilt tree.
    pub verified_sizes: Vec<u64>,
    pub findings: Vec<Finding>,
    /// Purges by policy (contract §9) that explain records the store no longer has.
    pub purges: Vec<Purge>,
}

/// One purge entry of the log and the records gone that it explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// The entry's position in the log.
    pub log_index: u64,
    /// When the store purged (the entry's `receivedAt`).
    pub at: String,
    /// Records of the export the store no longer has that this purge names.
    pub records: u64,
    /// The policy the entry states (`{"days": {...}}`, compact JSON), for the auditor to judge.
    pub policy: String,
}

impl fmt::Display for Purge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records purged by policy on {} (purge at logIndex {}, policy {})",
            self.records, self.at, self.log_index, self.policy
        )
    }
}

impl Report {
    /// Nothing found and at least one signed root matched.
    pub fn verified(&self) -> bool {
        self.findings.is_empty() && !self.verified_sizes.is_empty()
    }
}

/// Streams an export through the checks.
#[derive(Debug)]
pub struct Verifier {
    range: CompactRange,
    /// Signed roots by size, not yet reached.
    pending: BTreeMap<u64, Hash>,
    last_matching: Option<u64>,
    /// The latest receivedAt of the leaves so far.
    latest: Option<DateTime<Utc>>,
    max_skew: Duration,
    /// The retention the auditor expects: a purge whose cutoff is later than its own time less
    /// this explains no record.
    min_retention: Option<Duration>,
    /// After a leaf out of sequence the rebuilt tree no longer describes the log.
    broken: bool,
    /// Records gone, in runs, until the purge entries (later in the log) can explain them.
    gone: Vec<GoneRun>,
    /// The ids each purge entry names, as ranges: lo -> (hi, index into `purge_entries`).
    covered: BTreeMap<i64, (i64, usize)>,
    purge_entries: Vec<PurgeEntry>,
    report: Report,
}

/// Consecutive leaves of records gone with consecutive ids.
#[derive(Debug)]
struct GoneRun {
    first_index: u64,
    first_id: i64,
    len: u64,
    /// The kinds of the run's records, with the index of their first leaf.
    kinds: Vec<(String, u64)>,
    /// No record of the run was received before this (the latest `receivedAt` logged before the
    /// run, less the allowed skew).
    received_after: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct PurgeEntry {
    log_index: u64,
    at: String,
    /// `at` parsed.
    time: DateTime<Utc>,
    policy: String,
    /// Kind -> cutoff (records received before it were past retention).
    cutoffs: BTreeMap<String, DateTime<Utc>>,
    explained: u64,
}

impl Verifier {
    /// `checkpoints`: signed checkpoints (already opened with the log's keys); `max_skew`: how much
    /// earlier than a record logged before it a record may have been received (the longest write
    /// transaction plus the sequencer's delay).
    pub fn new(checkpoints: &[SignedCheckpoint], max_skew: Duration) -> Self {
        let mut v = Self {
            range: CompactRange::default(),
            pending: checkpoints.iter().map(|c| (c.size, c.root)).collect(),
            last_matching: None,
            latest: None,
            max_skew,
            min_retention: None,
            broken: false,
            gone: Vec::new(),
            covered: BTreeMap::new(),
            purge_entries: Vec::new(),
            report: Report::default(),
        };
        // A checkpoint of the empty tree is checked before any line.
        v.check_root();
        v
    }

    /// A purge explains records gone only when its cutoffs are at least `retention` before its
    /// own time (less `max_skew`: the cutoffs come from the service's clock, the time from the
    /// database's): the retention the auditor knows the store keeps.
    pub fn expect_retention(mut self, retention: Duration) -> Self {
        self.min_retention = Some(retention);
        self
    }

    /// Checks one line. `Err` is a line the verifier cannot read (usage or I/O, not a finding).
    pub fn push(&mut self, line: &ExportLine) -> Result<(), String> {
        let logged = hash_from_base64(&line.leaf_hash).ok_or_else(|| {
            format!(
                "logIndex {}: leafHash is not a base64 SHA-256",
                line.log_index
            )
        })?;
        if line.log_index != self.range.size() && !self.broken {
            self.report.findings.push(Finding::OutOfSequence {
                expected: self.range.size(),
                found: line.log_index,
            });
            self.broken = true;
        }
        match (line.record_leaf_hash(), &line.received_at) {
            (Some(leaf), Some(received_at)) => {
                if leaf != logged {
                    self.report.findings.push(Finding::Changed {
                        log_index: line.log_index,
                        kind: line.kind.clone(),
                        id: line.id,
                    });
                }
                self.check_time(line, received_at)?;
                if line.kind == "purge"
                    && let Some(body) = &line.record
                {
                    self.purge_entry(line.log_index, received_at, body)?;
                }
            }
            // Gone: deleted, unless a purge entry of the log names it (known at the end).
            _ => self.gone(line),
        }
        self.range.push(logged);
        self.report.size += 1;
        if !self.broken {
            self.check_root();
        }
        Ok(())
    }

    fn gone(&mut self, line: &ExportLine) {
        if let Some(run) = self.gone.last_mut()
            && run.first_index + run.len == line.log_index
            && run.first_id + run.len as i64 == line.id
        {
            run.len += 1;
            if run.kinds.iter().all(|(k, _)| *k != line.kind) {
                run.kinds.push((line.kind.clone(), line.log_index));
            }
            return;
        }
        self.gone.push(GoneRun {
            first_index: line.log_index,
            first_id: line.id,
            len: 1,
            kinds: vec![(line.kind.clone(), line.log_index)],
            received_after: self.latest.map(|t| t - self.max_skew),
        });
    }

    /// A purge entry's body (contract §9): `cutoffs` (kind -> timestamp), and the ids it removed,
    /// listed (`records`) or as `[lo, hi]` ranges (`ranges`, a partition dropped whole).
    fn purge_entry(
        &mut self,
        log_index: u64,
        at: &str,
        body: &Map<String, Value>,
    ) -> Result<(), String> {
        let n = self.purge_entries.len();
        let time = DateTime::parse_from_rfc3339(at)
            .map_err(|e| format!("logIndex {log_index}: receivedAt: {e}"))?
            .with_timezone(&Utc);
        let policy = body
            .get("policy")
            .map_or_else(|| "none stated".to_owned(), Value::to_string);
        let cutoffs = body
            .get("cutoffs")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
                        Some((k.clone(), t.with_timezone(&Utc)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.purge_entries.push(PurgeEntry {
            log_index,
            at: at.to_owned(),
            time,
            policy,
            cutoffs,
            explained: 0,
        });
        let ids = body.get("records").and_then(Value::as_array);
        for id in ids.into_iter().flatten().filter_map(Value::as_i64) {
            self.covered.entry(id).or_insert((id, n));
        }
        let ranges = body.get("ranges").and_then(Value::as_array);
        for r in ranges.into_iter().flatten() {
            if let (Some(lo), Some(hi)) = (
                r.get(0).and_then(Value::as_i64),
                r.get(1).and_then(Value::as_i64),
            ) && lo <= hi
            {
                self.covered.entry(lo).or_insert((hi, n));
            }
        }
        Ok(())
    }

    /// The purge entry naming `id`, if any.
    fn purge_of(&self, id: i64) -> Option<usize> {
        // Ranges may overlap (a batch after a partition's drop names none of its ids, but a log
        // written by hand might): every range starting at or before `id` is a candidate.
        self.covered
            .range(..=id)
            .rev()
            .find(|(_, (hi, _))| *hi >= id)
            .map(|(_, (_, n))| *n)
    }

    /// Records gone: explained by a purge entry whose cutoff their receipt can precede, or deleted.
    fn explain_gone(&mut self) {
        let gone = std::mem::take(&mut self.gone);
        for run in gone {
            for k in 0..run.len {
                let (log_index, id) = (run.first_index + k, run.first_id + k as i64);
                // The kind of this leaf: the run's kinds change only where listed.
                let kind = run
                    .kinds
                    .iter()
                    .rev()
                    .find(|(_, first)| *first <= log_index)
                    .map_or("", |(kind, _)| kind.as_str())
                    .to_owned();
                let Some(n) = self.purge_of(id) else {
                    self.report.findings.push(Finding::Deleted {
                        log_index,
                        kind,
                        id,
                    });
                    continue;
                };
                let entry = &mut self.purge_entries[n];
                if let (Some(cutoff), Some(retention)) =
                    (entry.cutoffs.get(&kind), self.min_retention)
                    && *cutoff > entry.time - retention + self.max_skew
                {
                    self.report.findings.push(Finding::ShorterRetention {
                        log_index,
                        kind,
                        id,
                        purge_log_index: entry.log_index,
                        cutoff: cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        purged_at: entry.at.clone(),
                        expected: if retention.num_seconds() % 86_400 == 0 {
                            format!("{} days", retention.num_days())
                        } else {
                            format!("{} hours", retention.num_hours())
                        },
                    });
                    continue;
                }
                match (entry.cutoffs.get(&kind), run.received_after) {
                    // Received no earlier than `after`, which is not before the cutoff.
                    (Some(cutoff), Some(after)) if after >= *cutoff => {
                        self.report.findings.push(Finding::DeletedBeforeExpiry {
                            log_index,
                            kind,
                            id,
                            purge_log_index: entry.log_index,
                            cutoff: cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        });
                    }
                    // A kind the purge keeps forever: not its to remove.
                    (None, _) => self.report.findings.push(Finding::DeletedBeforeExpiry {
                        log_index,
                        kind,
                        id,
                        purge_log_index: entry.log_index,
                        cutoff: "none: the purge keeps this kind".to_owned(),
                    }),
                    _ => entry.explained += 1,
                }
            }
        }
        for e in &self.purge_entries {
            self.report.purges.push(Purge {
                log_index: e.log_index,
                at: e.at.clone(),
                records: e.explained,
                policy: e.policy.clone(),
            });
        }
    }

    fn check_time(&mut self, line: &ExportLine, received_at: &str) -> Result<(), String> {
        let t = DateTime::parse_from_rfc3339(received_at)
            .map_err(|e| format!("logIndex {}: receivedAt: {e}", line.log_index))?
            .with_timezone(&Utc);
        match self.latest {
            Some(latest) if latest - t > self.max_skew => {
                self.report.findings.push(Finding::BackDated {
                    log_index: line.log_index,
                    kind: line.kind.clone(),
                    id: line.id,
                    received_at: received_at.to_owned(),
                    earlier_leaf_received_at: latest
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                });
            }
            Some(latest) if latest >= t => {}
            _ => self.latest = Some(t),
        }
        Ok(())
    }

    fn check_root(&mut self) {
        let size = self.range.size();
        let Some(signed) = self.pending.remove(&size) else {
            return;
        };
        let computed = self.range.root();
        if computed == signed {
            self.last_matching = Some(size);
            self.report.verified_sizes.push(size);
        } else {
            self.report.findings.push(Finding::RootMismatch {
                size,
                last_matching: self.last_matching,
                signed: hash_to_base64(&signed),
                computed: hash_to_base64(&computed),
            });
        }
    }

    /// The report, once every line was pushed.
    pub fn finish(mut self) -> Report {
        self.explain_gone();
        if !self.broken
            && let Some((&signed_size, _)) = self.pending.last_key_value()
        {
            self.report.findings.push(Finding::Truncated {
                size: self.range.size(),
                signed_size,
            });
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{CheckpointSigner, CheckpointVerifier, generate_key};
    use crate::tree::{StoredHashes, append, append_indexes, root, root_indexes};

    const ORIGIN: &str = "kubernaut.ai/datastorage/test";

    fn line(i: u64, seconds: i64) -> ExportLine {
        let record: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "name": format!("wf-{i}"), "namespace": "ns", "phase": "Completed",
            "correlationId": format!("rr-{}", i / 3), "createdAt": "2026-11-30T10:00:00.000000Z"
        }))
        .unwrap();
        let received_at = (DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z").unwrap()
            + Duration::seconds(seconds))
        .with_timezone(&Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        relogged(ExportLine {
            log_index: i,
            leaf_hash: String::new(),
            kind: "workflow".into(),
            id: 100 + i as i64,
            received_at: Some(received_at),
            record: Some(record),
        })
    }

    /// The line with the leaf hash of its own content (what a log rewritten to match would hold).
    fn relogged(mut l: ExportLine) -> ExportLine {
        l.leaf_hash = hash_to_base64(&l.record_leaf_hash().unwrap());
        l
    }

    /// A log of `n` records and signed checkpoints at `sizes`, as the service would produce them.
    fn log(n: u64, sizes: &[u64]) -> (Vec<ExportLine>, Vec<SignedCheckpoint>) {
        let lines: Vec<ExportLine> = (0..n).map(|i| line(i, i as i64)).collect();
        signed(lines, sizes)
    }

    /// `lines` and checkpoints of their log signed at `sizes`.
    fn signed(lines: Vec<ExportLine>, sizes: &[u64]) -> (Vec<ExportLine>, Vec<SignedCheckpoint>) {
        let (private, public) = generate_key("test", [9; 32]).unwrap();
        let signer = CheckpointSigner::new(ORIGIN, &private).unwrap();
        let keys = CheckpointVerifier::new(ORIGIN, &[public]).unwrap();
        let mut stored = StoredHashes::new();
        let mut checkpoints = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let leaf = hash_from_base64(&l.leaf_hash).unwrap();
            let _ = append_indexes(i as u64, 1).unwrap();
            stored.extend(append(i as u64, &[leaf], &stored).unwrap());
            let size = i as u64 + 1;
            if sizes.contains(&size) {
                let _ = root_indexes(size).unwrap();
                let note = signer.sign(size, root(size, &stored).unwrap()).unwrap();
                checkpoints.push(keys.open(note.as_bytes()).unwrap());
            }
        }
        (lines, checkpoints)
    }

    fn verify(lines: &[ExportLine], checkpoints: &[SignedCheckpoint]) -> Report {
        let mut v = Verifier::new(checkpoints, Duration::seconds(60));
        for l in lines {
            v.push(l).unwrap();
        }
        v.finish()
    }

    #[test]
    fn an_untouched_log_verifies_at_every_checkpoint() {
        let (lines, cps) = log(20, &[5, 13, 20]);
        let report = verify(&lines, &cps);
        assert!(report.verified(), "{:?}", report.findings);
        assert_eq!(report.verified_sizes, vec![5, 13, 20]);
        assert_eq!(report.size, 20);
        // Without a checkpoint nothing is verified.
        assert!(!verify(&lines, &[]).verified());
    }

    #[test]
    fn a_checkpoint_of_the_empty_tree_is_checked_too() {
        let (lines, mut cps) = log(4, &[4]);
        let (private, public) = generate_key("test", [9; 32]).unwrap();
        let empty = CheckpointSigner::new(ORIGIN, &private)
            .unwrap()
            .sign(0, crate::tree::EMPTY_HASH)
            .unwrap();
        cps.push(
            CheckpointVerifier::new(ORIGIN, &[public])
                .unwrap()
                .open(empty.as_bytes())
                .unwrap(),
        );
        let report = verify(&lines, &cps);
        assert!(report.verified(), "{:?}", report.findings);
        assert_eq!(report.verified_sizes, vec![0, 4]);
    }

    #[test]
    fn a_changed_field_names_the_record() {
        let (mut lines, cps) = log(20, &[20]);
        lines[7]
            .record
            .as_mut()
            .unwrap()
            .insert("phase".into(), "Failed".into());
        let r = verify(&lines, &cps);
        assert_eq!(
            r.findings,
            vec![Finding::Changed {
                log_index: 7,
                kind: "workflow".into(),
                id: 107
            }]
        );
        assert!(
            r.findings[0]
                .to_string()
                .starts_with("logIndex 7 (workflow 107)")
        );
    }

    #[test]
    fn deleted_records_are_named_one_by_one() {
        let (mut lines, cps) = log(20, &[20]);
        for i in [3usize, 4, 5] {
            lines[i].record = None;
            lines[i].received_at = None;
        }
        let r = verify(&lines, &cps);
        let deleted: Vec<u64> = r
            .findings
            .iter()
            .map(|f| match f {
                Finding::Deleted { log_index, .. } => *log_index,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(deleted, vec![3, 4, 5]);
    }

    /// A purge entry (contract §9) at `i`, received `seconds` after 12:00, with `body`.
    fn purge_line(i: u64, seconds: i64, body: Value) -> ExportLine {
        let mut l = line(i, seconds);
        l.kind = "purge".into();
        l.id = 10_000 + i as i64;
        l.record = Some(serde_json::from_value(body).unwrap());
        relogged(l)
    }

    #[test]
    fn records_a_purge_names_are_purged_and_the_others_gone_are_deleted() {
        // Records ten minutes apart from 12:00; a purge at 17:00 with the cutoff 13:40.
        let mut lines: Vec<ExportLine> = (0..30).map(|i| line(i, i as i64 * 600)).collect();
        lines.push(purge_line(
            30,
            5 * 3600,
            serde_json::json!({
                "reason": "retention", "count": 4, "policy": {"days": {"workflow": 1}},
                "cutoffs": {"workflow": "2026-11-30T13:40:00.000000Z"},
                "records": [103, 104, 105, 125]
            }),
        ));
        lines.push(purge_line(
            31,
            5 * 3600 + 1,
            serde_json::json!({
                "reason": "retention", "count": 2,
                "cutoffs": {"workflow": "2026-11-30T13:40:00.000000Z"},
                "partition": {"name": "audit_records_y2026m11"},
                "ranges": [[108, 109]]
            }),
        ));
        let (mut lines, cps) = signed(lines, &[32]);
        // Gone: three the first purge names and received before its cutoff; two a partition's
        // drop names; one it names but received at 16:10 (after records logged before it, at
        // 16:00): not expired; one no purge names.
        for i in [3usize, 4, 5, 8, 9, 25, 27] {
            lines[i].record = None;
            lines[i].received_at = None;
        }
        let r = verify(&lines, &cps);
        assert_eq!(r.verified_sizes, vec![32]);
        assert_eq!(
            r.findings,
            vec![
                Finding::DeletedBeforeExpiry {
                    log_index: 25,
                    kind: "workflow".into(),
                    id: 125,
                    purge_log_index: 30,
                    cutoff: "2026-11-30T13:40:00.000000Z".into(),
                },
                Finding::Deleted {
                    log_index: 27,
                    kind: "workflow".into(),
                    id: 127,
                },
            ]
        );
        assert_eq!(
            r.purges,
            vec![
                Purge {
                    log_index: 30,
                    at: "2026-11-30T17:00:00.000000Z".into(),
                    records: 3,
                    policy: r#"{"days":{"workflow":1}}"#.into(),
                },
                Purge {
                    log_index: 31,
                    at: "2026-11-30T17:00:01.000000Z".into(),
                    records: 2,
                    policy: "none stated".into(),
                },
            ]
        );
        assert_eq!(
            r.purges[0].to_string(),
            r#"3 records purged by policy on 2026-11-30T17:00:00.000000Z (purge at logIndex 30, policy {"days":{"workflow":1}})"#
        );
        // An auditor who knows the store keeps records at least 4 hours (the cutoff is 3 h 20 min
        // before the purge): the purge cannot explain them, whatever its entry says.
        let r = Verifier::new(&cps, Duration::seconds(300)).expect_retention(Duration::hours(4));
        let mut v = r;
        for l in &lines {
            v.push(l).unwrap();
        }
        let r = v.finish();
        let shorter: Vec<(u64, String)> = r
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::ShorterRetention {
                    log_index,
                    purged_at,
                    ..
                } => Some((*log_index, purged_at.clone())),
                _ => None,
            })
            .collect();
        let (first, second) = (
            "2026-11-30T17:00:00.000000Z".to_owned(),
            "2026-11-30T17:00:01.000000Z".to_owned(),
        );
        assert_eq!(
            shorter,
            vec![
                (3, first.clone()),
                (4, first.clone()),
                (5, first.clone()),
                (8, second.clone()),
                (9, second),
                (25, first)
            ]
        );
        assert!(r.purges.iter().all(|p| p.records == 0), "{:?}", r.purges);
        assert!(r.findings.iter().any(|f| f.to_string()
            == "logIndex 3 (workflow 103): the store does not have the record; the purge at logIndex 30 names it, but its cutoff (2026-11-30T13:40:00.000000Z) is less than the 4 hours of retention you expect before that purge (2026-11-30T17:00:00.000000Z): deleted"));
        // Three hours: the cutoffs are old enough.
        let mut v =
            Verifier::new(&cps, Duration::seconds(300)).expect_retention(Duration::hours(3));
        for l in &lines {
            v.push(l).unwrap();
        }
        assert!(
            !v.finish()
                .findings
                .iter()
                .any(|f| matches!(f, Finding::ShorterRetention { .. }))
        );
        // A purge entry changed after it was logged is a changed leaf like any other.
        let mut forged = lines.clone();
        forged[30].record.as_mut().unwrap()["records"] =
            serde_json::json!([103, 104, 105, 125, 127]);
        let r = verify(&forged, &cps);
        assert!(r.findings.contains(&Finding::Changed {
            log_index: 30,
            kind: "purge".into(),
            id: 10_030,
        }));
    }

    #[test]
    fn a_back_dated_insert_is_named() {
        let (mut lines, _) = log(20, &[]);
        let mut late = line(20, -3600);
        late.id = 999;
        lines.push(relogged(late));
        let r = verify(&lines, &[]);
        assert!(
            matches!(
                &r.findings[..],
                [Finding::BackDated {
                    log_index: 20,
                    id: 999,
                    ..
                }]
            ),
            "{:?}",
            r.findings
        );
        // Within the allowed skew, an earlier receivedAt is normal (concurrent transactions).
        let (mut lines, _) = log(5, &[]);
        lines.swap(2, 3);
        lines[2].log_index = 2;
        lines[3].log_index = 3;
        assert!(verify(&lines, &[]).findings.is_empty());
    }

    #[test]
    fn reordered_leaves_truncation_and_rewritten_history_name_sizes() {
        // Two leaves swapped in the log: the root of every later checkpoint differs.
        let (mut lines, cps) = log(20, &[8, 16, 20]);
        lines.swap(10, 11);
        lines[10].log_index = 10;
        lines[11].log_index = 11;
        let r = verify(&lines, &cps);
        assert_eq!(r.verified_sizes, vec![8]);
        assert!(matches!(
            &r.findings[0],
            Finding::RootMismatch {
                size: 16,
                last_matching: Some(8),
                ..
            }
        ));
        assert!(r.findings[0].to_string().contains("between sizes 8 and 16"));

        // The log cut at 17: the checkpoint of 20 names the truncation.
        let (mut lines, cps) = log(20, &[8, 20]);
        lines.truncate(17);
        let r = verify(&lines, &cps);
        assert_eq!(
            r.findings,
            vec![Finding::Truncated {
                size: 17,
                signed_size: 20
            }]
        );

        // History between checkpoints 8 and 16 rewritten consistently (content and leaf hashes).
        let (mut lines, cps) = log(20, &[8, 16]);
        let mut forged = line(12, 12);
        forged
            .record
            .as_mut()
            .unwrap()
            .insert("phase".into(), "Failed".into());
        lines[12] = relogged(forged);
        let r = verify(&lines, &cps);
        assert_eq!(r.verified_sizes, vec![8]);
        assert!(matches!(
            &r.findings[..],
            [Finding::RootMismatch {
                size: 16,
                last_matching: Some(8),
                ..
            }]
        ));

        // A gap in the sequence.
        let (mut lines, cps) = log(10, &[10]);
        lines.remove(4);
        let r = verify(&lines, &cps);
        assert_eq!(
            r.findings,
            vec![Finding::OutOfSequence {
                expected: 4,
                found: 5
            }]
        );
    }

    #[test]
    fn an_unreadable_line_is_an_error_not_a_finding() {
        let (mut lines, cps) = log(3, &[3]);
        lines[1].leaf_hash = "not base64".into();
        let mut v = Verifier::new(&cps, Duration::seconds(60));
        v.push(&lines[0]).unwrap();
        assert!(v.push(&lines[1]).unwrap_err().contains("logIndex 1"));
    }
}
