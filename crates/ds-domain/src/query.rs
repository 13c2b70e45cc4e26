//! Queries at scale (contract §10): the list of records (newest first) and the trail of a correlation
//! id (oldest first), one page at a time behind an opaque cursor (keyset pagination: a page costs the
//! same however deep the scroll; never `OFFSET`).
//!
//! A cursor names the position after the last record of its page and the query it belongs to: used
//! with other filters (or on the other endpoint) it is refused, so a client cannot silently mix two
//! scrolls. The page size may change from one page to the next. A cursor carries no secret: forging
//! one only moves the start of a scroll the caller may read anyway.

use crate::error::{AuditError, Violation};
use crate::kind::{Kind, Phase};
use crate::ports::StoredRecord;
use crate::record::{CORRELATION_ID, DNS_LABEL, is_correlation_id};
use crate::time::Timestamp;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The most records of one page, list and trail alike.
pub const MAX_LIMIT: usize = 1000;
/// Records per page of the list when `limit` is left out.
pub const LIST_DEFAULT_LIMIT: usize = 100;
/// Records per page of the trail when `limit` is left out.
pub const TRAIL_DEFAULT_LIMIT: usize = 1000;

/// The query parameters of `GET /api/v1/audit/records`.
pub const LIST_PARAMETERS: [&str; 8] = [
    "kind",
    "namespace",
    "phase",
    "correlationId",
    "since",
    "until",
    "limit",
    "cursor",
];
/// The query parameters of `GET /api/v1/audit/trail/{correlationId}`.
pub const TRAIL_PARAMETERS: [&str; 2] = ["limit", "cursor"];

/// A position in an ordered scroll: the sort key of the last record of a page (`receivedAt` for the
/// list, `createdAt` for the trail, in microseconds since the epoch) and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub at: Timestamp,
    pub id: i64,
}

/// What a listed record must match; every filter is optional and they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilters {
    pub kind: Option<Kind>,
    pub namespace: Option<String>,
    pub phase: Option<Phase>,
    pub correlation_id: Option<String>,
    /// Records received at or after this instant.
    pub since: Option<Timestamp>,
    /// Records received before this instant.
    pub until: Option<Timestamp>,
}

/// A validated page request of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filters: ListFilters,
    pub limit: usize,
    /// Start after this position (`None`: the newest record).
    pub after: Option<Position>,
}

/// A validated page request of a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailQuery {
    pub correlation_id: String,
    pub limit: usize,
    /// Start after this position (`None`: the oldest record).
    pub after: Option<Position>,
}

/// One page: its records and, when more may follow, the cursor of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<StoredRecord>,
    pub next_cursor: Option<String>,
}

/// Which scroll a cursor belongs to (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    List = b'L' as isize,
    Trail = b'T' as isize,
}

/// Scope, position (micros, id) and the first 8 bytes of the SHA-256 of the query's filters.
const CURSOR_BYTES: usize = 1 + 8 + 8 + 8;

fn tag(canonical: &str) -> [u8; 8] {
    let digest = Sha256::digest(canonical.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode(scope: Scope, position: Position, tag: [u8; 8]) -> String {
    let mut bytes = Vec::with_capacity(CURSOR_BYTES);
    bytes.push(scope as u8);
    bytes.extend_from_slice(&position.at.as_utc().timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(&position.id.to_be_bytes());
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(scope: Scope, cursor: &str, tag: [u8; 8]) -> Result<Position, Violation> {
    let unreadable = || {
        Violation::new(
            "cursor",
            "format",
            "is not a cursor this service gave (pass `nextCursor` as it came)",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| unreadable())?;
    if bytes.len() != CURSOR_BYTES {
        return Err(unreadable());
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        i64::from_be_bytes(b)
    };
    let at = DateTime::from_timestamp_micros(word(1)).ok_or_else(unreadable)?;
    let id = word(9);
    if bytes[0] != scope as u8 {
        return Err(Violation::new(
            "cursor",
            "scope",
            "belongs to another endpoint's scroll",
        ));
    }
    if bytes[17..] != tag {
        return Err(Violation::new(
            "cursor",
            "filters",
            "belongs to a query with other filters: repeat the filters of the page that gave it, or start again without a cursor",
        ));
    }
    Ok(Position {
        at: Timestamp::from_utc(at),
        id,
    })
}

impl ListFilters {
    /// The filters as one string (for the cursor's tag): equal filters, equal strings.
    fn canonical(&self) -> String {
        let time = |t: &Option<Timestamp>| {
            t.map_or_else(
                || "-".to_owned(),
                |t| t.as_utc().timestamp_micros().to_string(),
            )
        };
        format!(
            "list\n{}\n{}\n{}\n{}\n{}\n{}",
            self.kind.map_or("-", Kind::as_str),
            self.namespace.as_deref().unwrap_or("-"),
            self.phase.map_or("-", Phase::as_str),
            self.correlation_id.as_deref().unwrap_or("-"),
            time(&self.since),
            time(&self.until),
        )
    }
}

impl ListQuery {
    /// The cursor of the page that follows `last` (the last record of this page).
    pub fn cursor_after(&self, last: &StoredRecord) -> String {
        encode(
            Scope::List,
            Position {
                at: last.received_at,
                id: last.id,
            },
            tag(&self.filters.canonical()),
        )
    }
}

impl TrailQuery {
    fn canonical(correlation_id: &str) -> String {
        format!("trail\n{correlation_id}")
    }

    /// The cursor of the page that follows `last`; `None` if the record has no readable `createdAt`
    /// (every stored record has one).
    pub fn cursor_after(&self, last: &StoredRecord) -> Option<String> {
        let at = last
            .record
            .get("createdAt")
            .and_then(|v| v.as_str())
            .and_then(|s| Timestamp::parse(s).ok())?;
        Some(encode(
            Scope::Trail,
            Position { at, id: last.id },
            tag(&Self::canonical(&self.correlation_id)),
        ))
    }
}

/// The parameters of a query string: each known name at most once; unknown and repeated names are
/// violations.
fn collect(
    pairs: &[(String, String)],
    known: &[&str],
    violations: &mut Vec<Violation>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if !known.contains(&k.as_str()) {
            violations.push(Violation::new(
                k.chars().take(64).collect::<String>(),
                "unknown",
                format!("unknown parameter; this route takes {}", known.join(", ")),
            ));
        } else if out.contains_key(k) {
            violations.push(Violation::new(
                k.clone(),
                "repeated",
                "given more than once",
            ));
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn limit(
    params: &BTreeMap<String, String>,
    default: usize,
    violations: &mut Vec<Violation>,
) -> usize {
    match params.get("limit") {
        None => default,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT as i64).contains(&n) => usize::try_from(n).unwrap_or(default),
            Ok(n) => {
                violations.push(Violation::new(
                    "limit",
                    if n < 1 { "minimum" } else { "maximum" },
                    format!("must be 1 to {MAX_LIMIT}"),
                ));
                default
            }
            Err(_) => {
                violations.push(Violation::new(
                    "limit",
                    "type",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ));
                default
            }
        },
    }
}

fn correlation_id_violation() -> Violation {
    Violation::new(
        "correlationId",
        "pattern",
        format!("must match {}", CORRELATION_ID.as_str()),
    )
}

/// Validates the query string of the list; every violation is reported.
pub fn parse_list(pairs: &[(String, String)]) -> Result<ListQuery, AuditError> {
    let mut violations = Vec::new();
    let params = collect(pairs, &LIST_PARAMETERS, &mut violations);
    let mut filters = ListFilters::default();
    if let Some(v) = params.get("kind") {
        match v.parse::<Kind>() {
            Ok(k) => filters.kind = Some(k),
            Err(e) => violations.push(Violation::new("kind", "enum", e.to_string())),
        }
    }
    if let Some(v) = params.get("namespace") {
        if v.len() <= 63 && DNS_LABEL.is_match(v) {
            filters.namespace = Some(v.clone());
        } else {
            violations.push(Violation::new(
                "namespace",
                "pattern",
                format!(
                    "must be a DNS-1123 label of at most 63 characters ({})",
                    DNS_LABEL.as_str()
                ),
            ));
        }
    }
    if let Some(v) = params.get("phase") {
        match v.parse::<Phase>() {
            Ok(p) => filters.phase = Some(p),
            Err(e) => violations.push(Violation::new("phase", "enum", e)),
        }
    }
    if let Some(v) = params.get("correlationId") {
        if is_correlation_id(v) {
            filters.correlation_id = Some(v.clone());
        } else {
            violations.push(correlation_id_violation());
        }
    }
    for (name, slot) in [("since", &mut filters.since), ("until", &mut filters.until)] {
        if let Some(v) = params.get(name) {
            match Timestamp::parse(v) {
                Ok(t) => *slot = Some(t),
                Err(e) => violations.push(Violation::new(
                    name,
                    "format",
                    format!("must be RFC 3339: {e}"),
                )),
            }
        }
    }
    if let (Some(s), Some(u)) = (filters.since, filters.until)
        && u <= s
    {
        violations.push(Violation::new("until", "notBefore", "must be after since"));
    }
    let limit = limit(&params, LIST_DEFAULT_LIMIT, &mut violations);
    let mut after = None;
    // A cursor is checked against the filters only once they are valid (its tag hashes them).
    if let Some(c) = params.get("cursor")
        && violations.is_empty()
    {
        match decode(Scope::List, c, tag(&filters.canonical())) {
            Ok(p) => after = Some(p),
            Err(v) => violations.push(v),
        }
    }
    if violations.is_empty() {
        Ok(ListQuery {
            filters,
            limit,
            after,
        })
    } else {
        Err(AuditError::Validation(violations))
    }
}

/// Validates a trail request (the path's correlation id and the query string); every violation is
/// reported.
pub fn parse_trail(
    correlation_id: &str,
    pairs: &[(String, String)],
) -> Result<TrailQuery, AuditError> {
    let mut violations = Vec::new();
    if !is_correlation_id(correlation_id) {
        violations.push(correlation_id_violation());
    }
    let params = collect(pairs, &TRAIL_PARAMETERS, &mut violations);
    let limit = limit(&params, TRAIL_DEFAULT_LIMIT, &mut violations);
    let mut after = None;
    if let Some(c) = params.get("cursor")
        && violations.is_empty()
    {
        match decode(Scope::Trail, c, tag(&TrailQuery::canonical(correlation_id))) {
            Ok(p) => after = Some(p),
            Err(v) => violations.push(v),
        }
    }
    if violations.is_empty() {
        Ok(TrailQuery {
            correlation_id: correlation_id.to_owned(),
            limit,
            after,
        })
    } else {
        Err(AuditError::Validation(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::EmbeddingStatus;
    use serde_json::{Map, Value};

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn violations(r: Result<impl std::fmt::Debug, AuditError>) -> Vec<String> {
        match r {
            Err(AuditError::Validation(v)) => v
                .into_iter()
                .map(|v| format!("{}:{}", v.field, v.constraint))
                .collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    fn record(id: i64, received: &str, created: &str) -> StoredRecord {
        let mut record = Map::new();
        record.insert("createdAt".into(), Value::String(created.into()));
        StoredRecord {
            id,
            kind: Kind::Execution,
            received_at: Timestamp::parse(received).unwrap(),
            embedding_id: None,
            embedding_status: EmbeddingStatus::Pending,
            log_index: None,
            record,
        }
    }

    #[test]
    fn defaults_and_every_filter() {
        let q = parse_list(&[]).unwrap();
        assert_eq!(
            (q.limit, q.after, q.filters),
            (100, None, ListFilters::default())
        );
        let q = parse_list(&pairs(&[
            ("kind", "execution"),
            ("namespace", "payments"),
            ("phase", "Failed"),
            ("correlationId", "rr-2025-10-06-abc123"),
            ("since", "2025-10-06T00:00:00Z"),
            ("until", "2025-10-07T00:00:00+02:00"),
            ("limit", "1000"),
        ]))
        .unwrap();
        assert_eq!(q.limit, 1000);
        assert_eq!(q.filters.kind, Some(Kind::Execution));
        assert_eq!(q.filters.namespace.as_deref(), Some("payments"));
        assert_eq!(q.filters.phase, Some(Phase::Failed));
        assert_eq!(
            q.filters.until.map(|t| t.to_rfc3339()),
            Some("2025-10-06T22:00:00.000000Z".into())
        );
        assert_eq!(
            parse_trail("rr-2025-10-06-abc123", &[]).unwrap().limit,
            1000
        );
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut v = violations(parse_list(&pairs(&[
            ("kind", "nope"),
            ("namespace", "Not_A_Label"),
            ("phase", "failed"),
            ("correlationId", ""),
            ("since", "yesterday"),
            ("limit", "0"),
            ("offset", "10"),
            ("kind", "execution"),
        ])));
        v.sort();
        assert_eq!(
            v,
            [
                "correlationId:pattern",
                "kind:enum",
                "kind:repeated",
                "limit:minimum",
                "namespace:pattern",
                "offset:unknown",
                "phase:enum",
                "since:format",
            ]
        );
        assert_eq!(
            violations(parse_list(&pairs(&[("limit", "1001")]))),
            ["limit:maximum"]
        );
        assert_eq!(
            violations(parse_list(&pairs(&[("limit", "ten")]))),
            ["limit:type"]
        );
        assert_eq!(
            violations(parse_list(&pairs(&[
                ("since", "2025-10-06T00:00:00Z"),
                ("until", "2025-10-06T00:00:00Z")
            ]))),
            ["until:notBefore"]
        );
        assert_eq!(
            violations(parse_list(&pairs(&[("namespace", &"a".repeat(64))]))),
            ["namespace:pattern"]
        );
        let mut v = violations(parse_trail("RR-1", &pairs(&[("limit", "2000")])));
        v.sort();
        assert_eq!(v, ["correlationId:pattern", "limit:maximum"]);
    }

    #[test]
    fn a_cursor_resumes_after_the_last_record_of_its_page() {
        let q = parse_list(&pairs(&[("namespace", "payments"), ("limit", "2")])).unwrap();
        let last = record(42, "2025-10-06T10:00:46.123456Z", "2025-10-06T10:00:00Z");
        let cursor = q.cursor_after(&last);
        assert!(
            cursor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{cursor}"
        );
        // The page size may change; the filters may not.
        let next = parse_list(&pairs(&[
            ("namespace", "payments"),
            ("limit", "50"),
            ("cursor", &cursor),
        ]))
        .unwrap();
        assert_eq!(
            next.after,
            Some(Position {
                at: last.received_at,
                id: 42
            })
        );
        assert_eq!(
            violations(parse_list(&pairs(&[
                ("namespace", "billing"),
                ("cursor", &cursor)
            ]))),
            ["cursor:filters"]
        );
        assert_eq!(
            violations(parse_list(&pairs(&[("cursor", &cursor)]))),
            ["cursor:filters"]
        );
        // Trail cursors position on createdAt and belong to their correlation id.
        let t = parse_trail("rr-2025-10-06-abc123", &[]).unwrap();
        let tc = t.cursor_after(&last).unwrap();
        let resumed = parse_trail("rr-2025-10-06-abc123", &pairs(&[("cursor", &tc)])).unwrap();
        assert_eq!(
            resumed.after.map(|p| (p.at.to_rfc3339(), p.id)),
            Some(("2025-10-06T10:00:00.000000Z".into(), 42))
        );
        assert_eq!(
            violations(parse_trail(
                "rr-2025-10-06-zzz999",
                &pairs(&[("cursor", &tc)])
            )),
            ["cursor:filters"]
        );
        assert_eq!(
            violations(parse_trail(
                "rr-2025-10-06-abc123",
                &pairs(&[("cursor", &cursor)])
            )),
            ["cursor:scope"]
        );
        assert_eq!(
            violations(parse_list(&pairs(&[("cursor", &tc)]))),
            ["cursor:scope"]
        );
    }

    #[test]
    fn hostile_cursors_are_refused_without_panicking() {
        let long = "A".repeat(10_000);
        let good = parse_list(&[]).unwrap().cursor_after(&record(
            1,
            "2025-10-06T10:00:00Z",
            "2025-10-06T10:00:00Z",
        ));
        let truncated = &good[..good.len() - 1];
        let mut flipped = good.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for c in ["", "%00", "====", "\u{0}", "é", long.as_str(), truncated] {
            assert_eq!(
                violations(parse_list(&pairs(&[("cursor", c)]))),
                ["cursor:format"],
                "{c:?}"
            );
        }
        // A changed position decodes (the cursor is opaque, not signed): it resumes at whatever
        // position it names, within the same filters.
        let moved = parse_list(&pairs(&[("cursor", &flipped)]))
            .unwrap()
            .after
            .unwrap();
        assert_ne!(moved.at, Timestamp::parse("2025-10-06T10:00:00Z").unwrap());
        assert_eq!(moved.id, 1);
    }
}
