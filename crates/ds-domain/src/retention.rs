//! Retention (contract §9): how long each kind is kept, the cutoffs a purge applies, and the port
//! through which the maintenance task keeps month partitions ahead and purges what expired.

use crate::kind::Kind;
use crate::ports::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Days each kind is kept after the store received it; 0 keeps forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Every kind without its own (`retention.days`, default 90).
    pub default_days: u32,
    /// Per-kind overrides (`retention.days_<kind>`).
    pub kinds: BTreeMap<Kind, u32>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            default_days: 90,
            kinds: BTreeMap::new(),
        }
    }
}

impl RetentionPolicy {
    /// The days `kind` is kept (0: forever).
    pub fn days(&self, kind: Kind) -> u32 {
        self.kinds.get(&kind).copied().unwrap_or(self.default_days)
    }

    /// Each kind's cutoff at `now`: a record received before it is past retention; `None` for a
    /// kind kept forever.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> BTreeMap<Kind, Option<DateTime<Utc>>> {
        Kind::ALL
            .iter()
            .map(|&k| {
                let days = self.days(k);
                let cutoff = (days > 0).then(|| now - chrono::Duration::days(i64::from(days)));
                (k, cutoff)
            })
            .collect()
    }

    /// The cutoffs as the purge records them: kind -> RFC 3339 timestamp, kinds kept forever left
    /// out.
    pub fn cutoffs_json(&self, now: DateTime<Utc>) -> Value {
        let m: Map<String, Value> = self
            .cutoffs(now)
            .into_iter()
            .filter_map(|(k, c)| {
                c.map(|c| {
                    (
                        k.as_str().to_owned(),
                        json!(c.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                    )
                })
            })
            .collect();
        Value::Object(m)
    }

    /// The policy as a purge entry states it: `{"days": {"default": 90, "<kind>": n, …}}`.
    pub fn describe(&self) -> Value {
        let mut days = Map::new();
        days.insert("default".into(), json!(self.default_days));
        for (k, d) in &self.kinds {
            days.insert(k.as_str().to_owned(), json!(d));
        }
        json!({ "days": days })
    }

    /// Whether anything can expire (some kind has a retention).
    pub fn purges(&self) -> bool {
        Kind::ALL.iter().any(|&k| self.days(k) > 0)
    }
}

/// How the maintenance task works (contract §9; `retention.*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSettings {
    /// Month partitions kept ready after the current one.
    pub months_ahead: u32,
    /// Records examined per purge batch (one transaction each).
    pub batch: usize,
    /// Least pause between purge batches.
    pub pause: Duration,
    /// Records the purge deletes per second at most (0: no pace but `pause`): bounds the purge's
    /// share of the database's I/O and WAL, whatever the batches cost.
    pub rows_per_second: u32,
    /// How long dropping a partition waits for the table's lock (writers wait behind it meanwhile).
    pub drop_lock_wait: Duration,
    /// How long a run waits, at its end, for a signed checkpoint to cover the purge entries it
    /// logged (a purge is carried out only then); what is still pending goes at the next run.
    pub coverage_wait: Duration,
    /// Purge batches logged and not yet carried out, at most: how far logging runs ahead of
    /// deleting while checkpoints catch up.
    pub max_pending: u32,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            months_ahead: 3,
            batch: 1000,
            pause: Duration::from_millis(100),
            rows_per_second: 5000,
            drop_lock_wait: Duration::from_millis(200),
            coverage_wait: Duration::from_secs(60),
            max_pending: 100,
        }
    }
}

impl MaintenanceSettings {
    /// How long the purge waits before its next batch, `elapsed` after its first batch began with
    /// `purged` records deleted since: until `purged / rows_per_second` seconds have passed since
    /// the start, and at least `pause`.
    pub fn wait_before_next_batch(&self, elapsed: Duration, purged: u64) -> Duration {
        if self.rows_per_second == 0 {
            return self.pause;
        }
        let due = Duration::from_secs_f64(purged as f64 / f64::from(self.rows_per_second));
        due.saturating_sub(elapsed).max(self.pause)
    }
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceRun {
    /// Whether this replica did it (one replica at a time, decided by the database).
    pub ran: bool,
    /// Month partitions that exist after the current one.
    pub months_ahead: u32,
    /// Partitions created by this run.
    pub partitions_created: u32,
    /// Partitions dropped whole, and the records they held.
    pub partitions_dropped: u32,
    pub records_dropped: u64,
    /// Partitions whole-drop was due for but whose lock did not come in time (tried next run).
    pub drops_deferred: u32,
    /// Records deleted by batches, and the batches carried out.
    pub records_purged: u64,
    pub batches: u64,
    /// Records named by the purge entries this run logged (carried out once a checkpoint covers
    /// them, in this run or a later one).
    pub records_logged: u64,
    /// Purges logged (by this run or an earlier one) and still not carried out at its end.
    pub pending: u64,
}

/// A legal hold (contract §9): every record of `correlation_id`, written before or after it was
/// placed, is kept until it is released.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub id: i64,
    pub correlation_id: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_at: crate::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<crate::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_reason: Option<String>,
}

/// What releasing a hold did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Released now.
    Released(Hold),
    /// Released before: nothing changed; the recorded release stands.
    AlreadyReleased(Hold),
    /// No hold has that id.
    NotFound,
}

/// The longest reason of a hold or a release, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// The fields of a hold's body present in `value`, each checked; every violation is reported.
fn fields(
    value: serde_json::Value,
    wanted: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, crate::AuditError> {
    use crate::error::{AuditError, Violation};
    let Value::Object(map) = value else {
        return Err(AuditError::InvalidJson(
            "the body must be a JSON object".into(),
        ));
    };
    let mut violations: Vec<Violation> = map
        .keys()
        .filter(|k| !wanted.contains(&k.as_str()))
        .map(|k| Violation::new(k.clone(), "unknownField", "is not a field of a hold"))
        .collect();
    let mut out = BTreeMap::new();
    for &name in wanted {
        match map.get(name) {
            None | Some(Value::Null) => {
                violations.push(Violation::new(name, "required", "is required"))
            }
            Some(Value::String(v)) if name == "correlationId" => {
                if crate::record::is_correlation_id(v) {
                    out.insert(name, v.clone());
                } else {
                    violations.push(Violation::new(
                        name,
                        "pattern",
                        format!("must match {}", crate::record::CORRELATION_ID.as_str()),
                    ));
                }
            }
            Some(Value::String(v)) => {
                // The rules hold for the text as sent; what is kept is without controls and trimmed.
                let kept = crate::sanitize::strip_controls(v).trim().to_owned();
                if kept.is_empty() {
                    violations.push(Violation::new(
                        name,
                        "required",
                        "must hold a character that is neither a control nor white space",
                    ));
                } else if v.chars().count() > MAX_REASON_CHARS {
                    violations.push(Violation::new(
                        name,
                        "maxLength",
                        format!("must be at most {MAX_REASON_CHARS} characters"),
                    ));
                } else {
                    out.insert(name, kept);
                }
            }
            Some(_) => violations.push(Violation::new(name, "type", "must be a string")),
        }
    }
    if violations.is_empty() {
        Ok(out)
    } else {
        Err(AuditError::Validation(violations))
    }
}

/// A hold's body: `{"correlationId", "reason"}`.
pub fn parse_hold(value: Value) -> Result<(String, String), crate::AuditError> {
    let mut f = fields(value, &["correlationId", "reason"])?;
    Ok((
        f.remove("correlationId").unwrap_or_default(),
        f.remove("reason").unwrap_or_default(),
    ))
}

/// A release's body: `{"reason"}`.
pub fn parse_release(value: Value) -> Result<String, crate::AuditError> {
    Ok(fields(value, &["reason"])?
        .remove("reason")
        .unwrap_or_default())
}

/// Retention as the store stands now (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStatus {
    /// Month partitions after the current one, without a gap.
    pub months_ahead: u32,
    /// Legal holds placed and not released.
    pub holds_active: i64,
}

/// The store's side of retention.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Partitions ahead of `now` and active holds.
    async fn status(&self, now: DateTime<Utc>) -> Result<RetentionStatus, StoreError>;

    /// Places a hold, under the lock purges take, and appends a `hold` entry to the log, in one
    /// transaction.
    async fn place_hold(
        &self,
        correlation_id: &str,
        reason: &str,
        placed_by: &str,
    ) -> Result<Hold, StoreError>;

    /// Releases a hold (once: who, when, why) and appends a `release` entry to the log.
    async fn release_hold(
        &self,
        id: i64,
        reason: &str,
        released_by: &str,
    ) -> Result<Release, StoreError>;

    /// Holds, newest first; only those not released when `active_only`.
    async fn holds(&self, active_only: bool) -> Result<Vec<Hold>, StoreError>;

    /// One maintenance run, if this replica gets the role: keeps `months_ahead` month partitions
    /// after the one of `now`, then, when `purge`, drops every partition whose records all expired
    /// under `policy` at `now` and none is held, and deletes the other expired, unheld records in
    /// batches. Every purge is a log entry, appended first: what it names is deleted once a
    /// signed checkpoint covers it (in this run, or a later one).
    async fn maintain(
        &self,
        policy: &RetentionPolicy,
        settings: &MaintenanceSettings,
        now: DateTime<Utc>,
        purge: bool,
    ) -> Result<MaintenanceRun, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_is_paced_by_rows_per_second_with_a_least_pause() {
        let s = MaintenanceSettings {
            pause: Duration::from_millis(10),
            rows_per_second: 5000,
            ..MaintenanceSettings::default()
        };
        // 1,000 rows after 50 ms: due at 200 ms, so 150 ms more.
        assert_eq!(
            s.wait_before_next_batch(Duration::from_millis(50), 1000),
            Duration::from_millis(150)
        );
        // Behind the pace (a slow batch): only the least pause.
        assert_eq!(
            s.wait_before_next_batch(Duration::from_millis(900), 1000),
            Duration::from_millis(10)
        );
        // The pace is over the whole run, not per batch: 10,000 rows at 1.5 s, due at 2 s.
        assert_eq!(
            s.wait_before_next_batch(Duration::from_millis(1500), 10_000),
            Duration::from_millis(500)
        );
        // Batches that deleted nothing (held or not yet logged) wait the pause only.
        assert_eq!(
            s.wait_before_next_batch(Duration::from_millis(5), 0),
            Duration::from_millis(10)
        );
        let unpaced = MaintenanceSettings {
            rows_per_second: 0,
            ..s
        };
        assert_eq!(
            unpaced.wait_before_next_batch(Duration::ZERO, 1_000_000),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn each_kind_has_its_cutoff_and_zero_keeps_forever() {
        let mut p = RetentionPolicy::default();
        p.kinds.insert(Kind::Workflow, 7);
        p.kinds.insert(Kind::Execution, 0);
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = p.cutoffs(now);
        assert_eq!(
            c[&Kind::Workflow].unwrap().to_rfc3339(),
            "2026-11-23T12:00:00+00:00"
        );
        assert_eq!(
            c[&Kind::Remediation].unwrap().to_rfc3339(),
            "2026-09-01T12:00:00+00:00"
        );
        assert_eq!(c[&Kind::Execution], None);
        let j = p.cutoffs_json(now);
        assert_eq!(j["workflow"], "2026-11-23T12:00:00.000000Z");
        assert!(j.get("execution").is_none());
        assert_eq!(
            p.describe(),
            json!({"days": {"default": 90, "workflow": 7, "execution": 0}})
        );
        assert!(p.purges());
        let forever = RetentionPolicy {
            default_days: 0,
            kinds: BTreeMap::new(),
        };
        assert!(!forever.purges());
        assert!(forever.cutoffs(now).values().all(Option::is_none));
    }
}
