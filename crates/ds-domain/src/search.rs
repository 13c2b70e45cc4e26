//! Similarity search (contract §3): `{"query": "text" | "vector": [...], "kinds"?, "namespace"?, "since"?,
//! "until"?, "limit"? (1–100, default 10), "minSimilarity"? (0–1)}`.

use crate::error::{AuditError, Violation};
use crate::kind::Kind;
use crate::lenient;
use crate::time::Timestamp;
use serde::Deserialize;
use serde_json::Value;

/// What to search by.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchBy {
    /// Text, embedded with the configured provider.
    Text(String),
    /// A vector of the provider's dimension.
    Vector(Vec<f32>),
}

/// Filters that a hit must pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilters {
    /// Only these kinds (all kinds when `None`).
    pub kinds: Option<Vec<Kind>>,
    pub namespace: Option<String>,
    /// Records whose `createdAt` is at or after this instant.
    pub since: Option<Timestamp>,
    /// Records whose `createdAt` is before this instant.
    pub until: Option<Timestamp>,
}

/// A validated search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub by: SearchBy,
    pub filters: SearchFilters,
    pub limit: usize,
    pub min_similarity: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    query: Option<String>,
    /// Read as doubles, checked, then narrowed: a value is either representable in single precision
    /// or refused, never silently made infinite or zero.
    vector: Option<Vec<f64>>,
    kinds: Option<Vec<Kind>>,
    namespace: Option<String>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    limit: Option<i64>,
    min_similarity: Option<f64>,
}

/// The longest query text, in characters as sent (the model reads at most 256 tokens anyway).
pub const MAX_QUERY_CHARS: usize = 10 * 1024;

/// Validates a search body; every violation is reported.
pub fn parse_search(value: Value) -> Result<SearchRequest, AuditError> {
    let Value::Object(map) = value else {
        return Err(AuditError::InvalidJson(
            "a search must be a JSON object".into(),
        ));
    };
    let known = lenient::field_names::<Input>();
    let mut violations: Vec<Violation> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| Violation::new(k.clone(), "unknownField", "is not a search parameter"))
        .collect();
    let (input, mut type_errors) = lenient::from_map::<Input>(map);
    violations.append(&mut type_errors);
    let input = input.unwrap_or_default();

    let by = match (input.query, input.vector) {
        (Some(q), None) => {
            let kept = crate::sanitize::strip_controls(&q).trim().to_owned();
            if kept.is_empty() {
                violations.push(Violation::new(
                    "query",
                    "required",
                    "must hold a character that is neither a control nor white space",
                ));
            } else if q.chars().count() > MAX_QUERY_CHARS {
                violations.push(Violation::new(
                    "query",
                    "maxLength",
                    format!("must be at most {MAX_QUERY_CHARS} characters"),
                ));
            }
            Some(SearchBy::Text(kept))
        }
        (None, Some(v)) => {
            let single = f64::from(f32::MAX);
            let smallest = f64::from(f32::MIN_POSITIVE);
            if v.is_empty() || v.iter().any(|x| !x.is_finite() || x.abs() > single) {
                violations.push(Violation::new(
                    "vector",
                    "format",
                    "must be a non-empty array of finite numbers of single precision",
                ));
            } else if !v.iter().any(|x| x.abs() >= smallest) {
                violations.push(Violation::new(
                    "vector",
                    "contains",
                    "must hold a number of magnitude at least 1.1754943508222875e-38: a zero vector has no direction to compare",
                ));
            }
            // In range (checked above): the narrowing rounds, never overflows.
            Some(SearchBy::Vector(v.iter().map(|&x| x as f32).collect()))
        }
        (Some(_), Some(_)) => {
            violations.push(Violation::new(
                "query",
                "oneOf",
                "give either `query` or `vector`, not both",
            ));
            None
        }
        (None, None) => {
            if !violations
                .iter()
                .any(|v| v.field == "query" || v.field == "vector")
            {
                violations.push(Violation::new(
                    "query",
                    "required",
                    "give `query` (text) or `vector`",
                ));
            }
            None
        }
    };
    let limit = input.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        violations.push(Violation::new(
            "limit",
            if limit < 1 { "minimum" } else { "maximum" },
            "must be 1 to 100",
        ));
    }
    if let Some(m) = input.min_similarity
        && !(0.0..=1.0).contains(&m)
    {
        violations.push(Violation::new(
            "minSimilarity",
            if m < 0.0 { "minimum" } else { "maximum" },
            "must be 0 to 1",
        ));
    }
    if let (Some(s), Some(u)) = (input.since, input.until)
        && u <= s
    {
        violations.push(Violation::new("until", "notBefore", "must be after since"));
    }
    if let Some(k) = &input.kinds
        && k.is_empty()
    {
        violations.push(Violation::new(
            "kinds",
            "minItems",
            "must name at least one kind, or be left out",
        ));
    }
    match by {
        Some(by) if violations.is_empty() => Ok(SearchRequest {
            by,
            filters: SearchFilters {
                kinds: input.kinds,
                namespace: input.namespace,
                since: input.since,
                until: input.until,
            },
            limit: usize::try_from(limit).unwrap_or(10),
            min_similarity: input.min_similarity,
        }),
        _ => Err(AuditError::Validation(violations)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        match parse_search(v) {
            Err(AuditError::Validation(v)) => v
                .into_iter()
                .map(|v| format!("{}:{}", v.field, v.constraint))
                .collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_filters() {
        let r = parse_search(
            json!({"query": " OOM ", "kinds": ["remediation"], "namespace": "payments"}),
        )
        .unwrap();
        assert_eq!(r.by, SearchBy::Text("OOM".into()));
        assert_eq!(r.limit, 10);
        assert_eq!(r.filters.kinds, Some(vec![Kind::Remediation]));
    }

    #[test]
    fn every_problem_is_reported() {
        let mut f =
            fields(json!({"limit": 101, "minSimilarity": 1.5, "kinds": ["nope"], "extra": 1}));
        f.sort();
        assert_eq!(
            f,
            [
                "extra:unknownField",
                "kinds[0]:enum",
                "limit:maximum",
                "minSimilarity:maximum",
                "query:required"
            ]
        );
        assert_eq!(
            fields(json!({"query": "a", "vector": [1.0]})),
            ["query:oneOf"]
        );
        assert_eq!(fields(json!({"query": "a", "limit": 0})), ["limit:minimum"]);
        assert_eq!(
            fields(
                json!({"query": "a", "since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"})
            ),
            ["until:notBefore"]
        );
    }
}
