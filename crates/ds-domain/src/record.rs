//! The four record kinds of contract §2 as validated types, and [`parse_record`], the one entry point
//! that turns client JSON into a [`ValidRecord`] or the complete list of what is wrong with it.
//!
//! Input structs keep required fields as `Option` so that every missing field is reported together
//! (garde's `required`), not only the first one (serde's behaviour). After [`parse_record`] succeeds,
//! every required field is present: [`Common`] holds them without `Option`.

use crate::digest::{Sha256Digest, canonical_digest};
use crate::embedding_text;
use crate::error::{AuditError, Violation};
use crate::kind::{Kind, Phase};
use crate::lenient;
use crate::sanitize::{has_forbidden_controls, sanitize_text};
use crate::time::Timestamp;
use crate::validate::{self, err};
use base64::Engine;
use garde::Validate;
use regex::Regex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Names that the service adds when it returns a record; a client may not send them as unknown fields.
pub const RESERVED_FIELDS: [&str; 4] = ["id", "kind", "receivedAt", "embeddingStatus"];

/// Names, namespaces (DNS-1123 label) and the other Kubernetes identifiers of contract §2.
pub static DNS_LABEL: LazyLock<Regex> =
    LazyLock::new(|| literal_regex(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"));

/// `correlationId`. `\d` is written `[0-9]`: the regex crate's `\d` also matches non-ASCII digits.
pub static CORRELATION_ID: LazyLock<Regex> =
    LazyLock::new(|| literal_regex(r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$"));

#[allow(clippy::expect_used)] // invariant: only called with the literals above, which the tests compile
fn literal_regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a literal regex compiles")
}

/// Whether `s` is a well-formed correlation id (the rule of the `correlationId` field).
pub fn is_correlation_id(s: &str) -> bool {
    CORRELATION_ID.is_match(s)
}

/// The limit of `message`, in characters (Unicode code points, what JSON Schema's `maxLength` counts):
/// the contract's "10 KiB" as a rule that the OpenAPI document can state exactly.
pub const MESSAGE_MAX_CHARS: usize = 10 * 1024;
/// The limit of a value of `labels`, `signalContext` and `actionData`, in characters.
pub const MAP_VALUE_MAX_CHARS: usize = 1024;
/// The most entries of `labels`, `signalContext` and `actionData`.
pub const MAP_MAX_ENTRIES: usize = 64;
/// The longest key of `labels`, `signalContext` and `actionData`, in characters.
pub const MAP_KEY_MAX_CHARS: usize = 317;

/// The longest `originalPayload`, in base64 characters: 1 MiB once decoded (up to 2 bytes more
/// when the text has no padding). A limit on the text as sent, so that the OpenAPI document states it.
pub const ORIGINAL_PAYLOAD_MAX_CHARS: usize = ORIGINAL_PAYLOAD_MAX_BYTES.div_ceil(3) * 4;
/// 1 MiB: the limit of a decoded `originalPayload`.
pub const ORIGINAL_PAYLOAD_MAX_BYTES: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------------
// Enumerations of contract §2
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum SignalType {
    Prometheus,
    KubernetesEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    Deployment,
    Statefulset,
    Daemonset,
    Pod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Staging,
    Development,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    P0,
    P1,
    P2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    Openai,
    Anthropic,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ActionResult {
    Success,
    Failure,
}

macro_rules! enum_str {
    ($($t:ty),*) => {$(
        impl $t {
            /// The JSON name of the value.
            pub fn as_str(&self) -> String {
                serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            }
        }
    )*};
}
enum_str!(SignalType, TargetType, ActionResult);

// ---------------------------------------------------------------------------------------------------
// Custom rules
// ---------------------------------------------------------------------------------------------------

fn no_controls(value: &Option<String>, _: &()) -> garde::Result {
    match value {
        Some(s) if has_forbidden_controls(s) => {
            Err(err("noControlChars", "must not contain control characters"))
        }
        _ => Ok(()),
    }
}

/// `labels`, `signalContext`, `actionData`: at most 64 entries, keys non-empty and ≤ 317 characters,
/// values ≤ 1 KiB, no control characters (tab, LF and CR are allowed in values).
fn string_map(value: &Option<BTreeMap<String, String>>, _: &()) -> garde::Result {
    let Some(map) = value else { return Ok(()) };
    if map.len() > MAP_MAX_ENTRIES {
        return Err(err(
            "maxItems",
            format!(
                "must have at most {MAP_MAX_ENTRIES} entries, has {}",
                map.len()
            ),
        ));
    }
    for (k, v) in map {
        let shown: String = k.chars().take(64).collect();
        if k.is_empty() || k.chars().count() > MAP_KEY_MAX_CHARS {
            return Err(err(
                "keyLength",
                format!("key {shown:?} must be 1 to {MAP_KEY_MAX_CHARS} characters long"),
            ));
        }
        if k.chars().any(char::is_control) {
            return Err(err(
                "noControlChars",
                format!("key {shown:?} must not contain control characters"),
            ));
        }
        if v.chars().count() > MAP_VALUE_MAX_CHARS {
            return Err(err(
                "valueLength",
                format!("value of {shown:?} must be at most {MAP_VALUE_MAX_CHARS} characters"),
            ));
        }
        if has_forbidden_controls(v) {
            return Err(err(
                "noControlChars",
                format!("value of {shown:?} must not contain control characters"),
            ));
        }
    }
    Ok(())
}

fn base64_payload(value: &Option<String>, _: &()) -> garde::Result {
    let Some(s) = value else { return Ok(()) };
    // Refuse oversized input before decoding it.
    if s.chars().count() > ORIGINAL_PAYLOAD_MAX_CHARS {
        return Err(err(
            "maxLength",
            format!(
                "must be at most {ORIGINAL_PAYLOAD_MAX_CHARS} base64 characters (1 MiB decoded)"
            ),
        ));
    }
    match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
        Ok(_) => Ok(()),
        Err(_) => Err(err(
            "base64",
            "must be standard base64 (RFC 4648, with padding)",
        )),
    }
}

/// The schema of `labels`, `signalContext` and `actionData` (the rules of `string_map`).
#[cfg(feature = "openapi")]
fn string_map_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAP_VALUE_MAX_CHARS))
        .pattern(Some(
            r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$",
        ));
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAP_KEY_MAX_CHARS))
        .pattern(Some(r"^[^\u0000-\u001f\u007f-\u009f]*$"));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(MAP_MAX_ENTRIES))
        .property_names(Some(key))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some(format!(
            "string to string, at most {MAP_MAX_ENTRIES} entries; keys 1–{MAP_KEY_MAX_CHARS} characters without control characters; values at most {MAP_VALUE_MAX_CHARS} characters without control characters other than tab, LF and CR"
        )))
        .build()
}

// ---------------------------------------------------------------------------------------------------
// Common fields
// ---------------------------------------------------------------------------------------------------

/// Fields common to every kind, as sent (contract §2.1).
#[derive(Debug, Clone, Default, Deserialize, Serialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommonInput {
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), pattern(DNS_LABEL))]
    pub name: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 63,
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 63), pattern(DNS_LABEL))]
    pub namespace: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    #[garde(required)]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 10240))]
    #[garde(length(chars, max = 10240))]
    pub message: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    #[garde(required)]
    pub created_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub completed_at: Option<Timestamp>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$"
        )
    )]
    #[garde(required, pattern(CORRELATION_ID))]
    pub correlation_id: Option<String>,
}

/// The common fields of a valid record: every required one present.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Common {
    pub name: String,
    pub namespace: String,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    pub correlation_id: String,
}

impl CommonInput {
    fn sanitize(&mut self) {
        sanitize_opt(&mut self.message);
    }

    fn cross_check(&self, out: &mut Vec<Violation>) {
        check_order(self.created_at, self.started_at, self.completed_at, "", out);
    }

    fn into_common(self) -> Option<Common> {
        Some(Common {
            name: self.name?,
            namespace: self.namespace?,
            phase: self.phase?,
            message: self.message,
            created_at: self.created_at?,
            started_at: self.started_at,
            completed_at: self.completed_at,
            correlation_id: self.correlation_id?,
        })
    }
}

fn sanitize_opt(v: &mut Option<String>) {
    if let Some(s) = v.as_mut() {
        *s = sanitize_text(s);
    }
}

/// `startedAt ≥ createdAt`; `completedAt ≥ startedAt`, or `≥ createdAt` when there is no `startedAt`.
fn check_order(
    created: Option<Timestamp>,
    started: Option<Timestamp>,
    completed: Option<Timestamp>,
    prefix: &str,
    out: &mut Vec<Violation>,
) {
    if let (Some(c), Some(s)) = (created, started)
        && s < c
    {
        out.push(Violation::new(
            format!("{prefix}startedAt"),
            "notBefore",
            "must not be before createdAt",
        ));
    }
    match (started, created, completed) {
        (Some(s), _, Some(done)) if done < s => {
            out.push(Violation::new(
                format!("{prefix}completedAt"),
                "notBefore",
                "must not be before startedAt",
            ));
        }
        (None, Some(c), Some(done)) if done < c => {
            out.push(Violation::new(
                format!("{prefix}completedAt"),
                "notBefore",
                "must not be before createdAt",
            ));
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------------
// The kinds
// ---------------------------------------------------------------------------------------------------

/// What each kind adds to the common fields.
pub trait KindInput: DeserializeOwned + Serialize + Validate<Context = ()> + Default {
    const KIND: Kind;
    /// Sanitizes the free-text fields (§2.7).
    fn sanitize(&mut self);
    /// Rules that span several fields, and normalisations that follow validation.
    fn cross_check(&mut self, _out: &mut Vec<Violation>) {}
    /// The text embedded for this record (see [`embedding_text`]).
    fn embedding_text(&self, common: &Common) -> String;
}

/// remediation (contract §2.2).
#[derive(Debug, Clone, Default, Deserialize, Serialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RemediationInput {
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    #[garde(required)]
    pub signal_type: Option<SignalType>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub signal_name: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 63,
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 63), pattern(DNS_LABEL))]
    pub signal_namespace: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    #[garde(required)]
    pub target_type: Option<TargetType>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub target_name: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 63,
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 63), pattern(DNS_LABEL))]
    pub target_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub environment: Option<Environment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub priority: Option<Priority>,
    /// 64 hex digits; a `sha256:` prefix is accepted and stored without it; stored in lower case.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    #[garde(pattern(r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 255), custom(no_controls))]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = string_map_schema))]
    #[garde(custom(string_map))]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 1398104,
            pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
        )
    )]
    #[garde(custom(base64_payload))]
    pub original_payload: Option<String>,
}

impl KindInput for RemediationInput {
    const KIND: Kind = Kind::Remediation;
    fn sanitize(&mut self) {}
    fn cross_check(&mut self, _: &mut Vec<Violation>) {
        if let Some(f) = self.fingerprint.as_mut() {
            *f = f.strip_prefix("sha256:").unwrap_or(f).to_ascii_lowercase();
        }
    }
    fn embedding_text(&self, common: &Common) -> String {
        embedding_text::remediation(common, self)
    }
}

/// aianalysis (contract §2.3).
#[derive(Debug, Clone, Default, Deserialize, Serialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AiAnalysisInput {
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub remediation_request_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub signal_type: Option<SignalType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = string_map_schema))]
    #[garde(custom(string_map))]
    pub signal_context: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub llm_provider: Option<LlmProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 100,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 100), custom(no_controls))]
    pub llm_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 2.0))]
    #[garde(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub root_cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    #[garde(range(min = 0.0, max = 1.0))]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub recommended_action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub requires_approval: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 255), custom(no_controls))]
    pub investigation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_i64)
    )]
    #[garde(range(min = 1))]
    pub tokens_used: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9223372036854775807_i64)
    )]
    #[garde(range(min = 0))]
    pub investigation_time_seconds: Option<i64>,
}

impl KindInput for AiAnalysisInput {
    const KIND: Kind = Kind::AiAnalysis;
    fn sanitize(&mut self) {
        sanitize_opt(&mut self.root_cause);
        sanitize_opt(&mut self.recommended_action);
    }
    fn embedding_text(&self, common: &Common) -> String {
        embedding_text::aianalysis(common, self)
    }
}

/// One step of a workflow (contract §2.4).
#[derive(Debug, Clone, Default, Deserialize, Serialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    #[garde(required)]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub completed_at: Option<Timestamp>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            minimum = 0,
            maximum = 9223372036854775807_i64
        )
    )]
    #[garde(required, range(min = 0))]
    pub retry_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 10240))]
    #[garde(length(chars, max = 10240))]
    pub message: Option<String>,
}

/// workflow (contract §2.4).
#[derive(Debug, Clone, Default, Deserialize, Serialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowInput {
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub remediation_request_ref: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub workflow_name: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            minimum = 1,
            maximum = 9223372036854775807_i64
        )
    )]
    #[garde(required, range(min = 1))]
    pub step_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 255), custom(no_controls))]
    pub ai_analysis_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub is_auto_approved: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub requires_approval: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9223372036854775807_i64)
    )]
    #[garde(range(min = 0))]
    pub current_step: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9223372036854775807_i64)
    )]
    #[garde(range(min = 0))]
    pub completed_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9223372036854775807_i64)
    )]
    #[garde(range(min = 0))]
    pub failed_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9223372036854775807_i64)
    )]
    #[garde(range(min = 0))]
    pub skipped_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    #[garde(length(max = 1000), dive)]
    pub step_statuses: Option<Vec<StepStatus>>,
}

impl KindInput for WorkflowInput {
    const KIND: Kind = Kind::Workflow;
    fn sanitize(&mut self) {
        for step in self.step_statuses.iter_mut().flatten() {
            sanitize_opt(&mut step.message);
        }
    }
    fn cross_check(&mut self, out: &mut Vec<Violation>) {
        if let (Some(total), Some(cur)) = (self.step_count, self.current_step)
            && cur > total
        {
            out.push(Violation::new(
                "currentStep",
                "maximum",
                format!("must be at most stepCount ({total})"),
            ));
        }
        let counts = [self.completed_count, self.failed_count, self.skipped_count];
        if let Some(total) = self.step_count {
            let sum: i128 = counts.iter().flatten().map(|&c| i128::from(c.max(0))).sum();
            if sum > i128::from(total) {
                out.push(Violation::new(
                    "completedCount",
                    "sumAtMostStepCount",
                    format!("completedCount + failedCount + skippedCount ({sum}) must be at most stepCount ({total})"),
                ));
            }
        }
        for (i, step) in self.step_statuses.iter().flatten().enumerate() {
            check_order(
                None,
                step.started_at,
                step.completed_at,
                &format!("stepStatuses[{i}]."),
                out,
            );
        }
    }
    fn embedding_text(&self, common: &Common) -> String {
        embedding_text::workflow(common, self)
    }
}

/// execution (contract §2.5).
#[derive(Debug, Clone, Default, Deserialize, Serialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecutionInput {
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub workflow_execution_ref: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 100,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 100), custom(no_controls))]
    pub action_type: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    #[garde(required)]
    pub target_type: Option<TargetType>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 255), custom(no_controls))]
    pub target_name: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            nullable = false,
            min_length = 1,
            max_length = 63,
            pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        )
    )]
    #[garde(required, length(chars, min = 1, max = 63), pattern(DNS_LABEL))]
    pub target_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 255,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 255), custom(no_controls))]
    pub step_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = string_map_schema))]
    #[garde(custom(string_map))]
    pub action_data: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub enable_dry_run: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub enable_validation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub enable_rollback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub is_rolled_back: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub action_result: Option<ActionResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 100,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 100), custom(no_controls))]
    pub resource_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 100,
            pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
        )
    )]
    #[garde(length(chars, max = 100), custom(no_controls))]
    pub previous_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub dry_run_result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub validation_result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    #[garde(length(max = 100))]
    pub validation_warnings: Option<Vec<String>>,
}

impl KindInput for ExecutionInput {
    const KIND: Kind = Kind::Execution;
    fn sanitize(&mut self) {
        sanitize_opt(&mut self.dry_run_result);
        sanitize_opt(&mut self.validation_result);
        for w in self.validation_warnings.iter_mut().flatten() {
            *w = sanitize_text(w);
        }
    }
    fn embedding_text(&self, common: &Common) -> String {
        embedding_text::execution(common, self)
    }
}

// ---------------------------------------------------------------------------------------------------
// The valid record
// ---------------------------------------------------------------------------------------------------

/// A record that passed every rule, sanitized and normalised, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    pub kind: Kind,
    pub common: Common,
    /// The kind-specific fields, as JSON with camelCase names (absent optional fields left out).
    pub details: Map<String, Value>,
    /// Fields that the kind does not define, kept verbatim (contract §2.6).
    pub unknown: Map<String, Value>,
    /// The text that is embedded for this record (contract §5).
    pub embedding_text: String,
    /// SHA-256 of the canonical JSON of (kind, common, details, unknown): two records are the same
    /// record exactly when their digests are equal (contract §2.9).
    pub content_digest: Sha256Digest,
}

impl ValidRecord {
    /// The record as written: common + kind-specific + unknown fields in one JSON object.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut out = match serde_json::to_value(&self.common) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        out.extend(self.details.clone());
        for (k, v) in &self.unknown {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
        out
    }
}

/// Validates one record of `kind`. Every broken rule is reported, with camelCase field paths.
pub fn parse_record(kind: Kind, value: Value) -> Result<ValidRecord, AuditError> {
    let Value::Object(map) = value else {
        return Err(AuditError::InvalidJson(format!(
            "a {kind} record must be a JSON object"
        )));
    };
    match kind {
        Kind::Remediation => parse_kind::<RemediationInput>(map),
        Kind::AiAnalysis => parse_kind::<AiAnalysisInput>(map),
        Kind::Workflow => parse_kind::<WorkflowInput>(map),
        Kind::Execution => parse_kind::<ExecutionInput>(map),
    }
    .map_err(AuditError::Validation)
}

fn parse_kind<T: KindInput>(map: Map<String, Value>) -> Result<ValidRecord, Vec<Violation>> {
    let common_names = lenient::field_names::<CommonInput>();
    let kind_names = lenient::field_names::<T>();
    let mut common_map = Map::new();
    let mut kind_map = Map::new();
    let mut unknown = Map::new();
    let mut violations = Vec::new();
    for (k, v) in map {
        if common_names.contains(&k.as_str()) {
            common_map.insert(k, v);
        } else if kind_names.contains(&k.as_str()) {
            kind_map.insert(k, v);
        } else if RESERVED_FIELDS.contains(&k.as_str()) {
            violations.push(Violation::new(
                k,
                "reserved",
                "is set by the service and may not be sent",
            ));
        } else {
            check_storable(&v, &k, &mut violations);
            if k.contains('\0') {
                violations.push(Violation::new(
                    k.replace('\0', "\\u0000"),
                    "noNul",
                    "field names may not contain NUL",
                ));
            }
            unknown.insert(k, v);
        }
    }

    let (common, mut v1) = lenient::from_map::<CommonInput>(common_map);
    let (spec, mut v2) = lenient::from_map::<T>(kind_map);
    violations.append(&mut v1);
    violations.append(&mut v2);
    let mut common = common.unwrap_or_default();
    let mut spec = spec.unwrap_or_default();
    let typed_bad: Vec<String> = violations
        .iter()
        .map(|v| top_field(&v.field).to_owned())
        .collect();

    // A field already reported for its type is not reported again as missing.
    let not_retyped =
        |v: &Violation| !(v.constraint == "required" && typed_bad.iter().any(|b| b == &v.field));
    violations.extend(validate::run(&common).into_iter().filter(not_retyped));
    violations.extend(validate::run(&spec).into_iter().filter(not_retyped));
    common.cross_check(&mut violations);
    spec.cross_check(&mut violations);
    // Rules apply to the values as sent (the OpenAPI document states them so); the free text that is
    // kept is then sanitized.
    common.sanitize();
    spec.sanitize();

    let common = match common.into_common() {
        Some(c) if violations.is_empty() => c,
        _ => return Err(violations),
    };
    let details = match serde_json::to_value(&spec) {
        Ok(Value::Object(m)) => m,
        // Serializing a struct of strings, numbers and maps cannot fail nor give a non-object.
        _ => {
            return Err(vec![Violation::new(
                ".",
                "internal",
                "record could not be serialized",
            )]);
        }
    };
    let embedding_text = spec.embedding_text(&common);
    let content_digest = canonical_digest(T::KIND, &common, &details, &unknown);
    Ok(ValidRecord {
        kind: T::KIND,
        common,
        details,
        unknown,
        embedding_text,
        content_digest,
    })
}

/// The name `name` as a field of `kind` (common, kind-specific or reserved), or `None` for a name the
/// kind does not define (a client's own). Gives metrics a closed set of field labels.
pub fn defined_field(kind: Kind, name: &str) -> Option<&'static str> {
    let kind_names = match kind {
        Kind::Remediation => lenient::field_names::<RemediationInput>(),
        Kind::AiAnalysis => lenient::field_names::<AiAnalysisInput>(),
        Kind::Workflow => lenient::field_names::<WorkflowInput>(),
        Kind::Execution => lenient::field_names::<ExecutionInput>(),
    };
    lenient::field_names::<CommonInput>()
        .iter()
        .chain(kind_names)
        .chain(RESERVED_FIELDS.iter())
        .find(|f| **f == name)
        .copied()
}

fn top_field(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// PostgreSQL's `jsonb` cannot store the NUL character (`\u0000`); an unknown field holding one is
/// rejected rather than silently altered.
fn check_storable(v: &Value, path: &str, out: &mut Vec<Violation>) {
    match v {
        Value::String(s) if s.contains('\0') => {
            out.push(Violation::new(
                path,
                "noNul",
                "must not contain the NUL character",
            ));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_storable(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                if k.contains('\0') {
                    out.push(Violation::new(
                        path,
                        "noNul",
                        "field names must not contain the NUL character",
                    ));
                } else {
                    check_storable(item, &format!("{path}.{k}"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
