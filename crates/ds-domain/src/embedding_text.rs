//! The embedding text of each kind: one documented, deterministic function from record to text
//! (contract §5). Same record → same text → same vector.
//!
//! The text says what a person would search by: what happened (signal, action, root cause), to what
//! (target kind, namespace and name), how it ended (phase, result) and the free-text message. It leaves
//! out what identifies one record rather than one incident (record name, correlation id, timestamps,
//! fingerprints, labels), so that repeated alerts produce identical text and share one stored vector.
//!
//! Format: sentences joined by `". "`, each present only when its fields are; no trailing period.
//! Bounded: at most [`MAX_CHARS`] characters (the structured sentences come first, so what is cut is the
//! end of the free text); the stored record keeps every value whole. Providers refuse inputs over their
//! context length, and a text that is always refused could never be embedded.

use crate::record::{AiAnalysisInput, Common, ExecutionInput, RemediationInput, WorkflowInput};

/// The longest embedding text, in characters (about 1,000 tokens of English: within the context of
/// every embedding model this service is used with; the local model reads its first 256 tokens).
pub const MAX_CHARS: usize = 4_000;

fn join(parts: Vec<String>) -> String {
    bounded(
        parts
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .collect::<Vec<_>>()
            .join(". "),
    )
}

/// `text` cut to its first [`MAX_CHARS`] characters.
fn bounded(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_CHARS) {
        text.truncate(at);
    }
    text
}

fn message(common: &Common) -> Option<String> {
    common
        .message
        .as_ref()
        .filter(|m| !m.is_empty())
        .map(|m| m.to_owned())
}

/// `remediation <phase>: <signalType> signal <signalName> in namespace <signalNamespace>.
/// target <targetType> <targetNamespace>/<targetName>. reason: <reason>. <message>`
pub fn remediation(common: &Common, r: &RemediationInput) -> String {
    let mut parts = vec![format!(
        "remediation {}: {} signal {} in namespace {}",
        common.phase.as_str(),
        r.signal_type.map(|s| s.as_str()).unwrap_or_default(),
        r.signal_name.as_deref().unwrap_or_default(),
        r.signal_namespace.as_deref().unwrap_or_default(),
    )];
    parts.push(format!(
        "target {} {}/{}",
        r.target_type.map(|t| t.as_str()).unwrap_or_default(),
        r.target_namespace.as_deref().unwrap_or_default(),
        r.target_name.as_deref().unwrap_or_default(),
    ));
    if let Some(reason) = r.reason.as_deref().filter(|s| !s.is_empty()) {
        parts.push(format!("reason: {reason}"));
    }
    parts.extend(message(common));
    join(parts)
}

/// `AI analysis <phase>: <signalType> signal. root cause: <rootCause>.
/// recommended action: <recommendedAction>. <message>`
pub fn aianalysis(common: &Common, a: &AiAnalysisInput) -> String {
    let head = match a.signal_type {
        Some(s) => format!(
            "AI analysis {}: {} signal",
            common.phase.as_str(),
            s.as_str()
        ),
        None => format!("AI analysis {}", common.phase.as_str()),
    };
    let mut parts = vec![head];
    if let Some(rc) = a.root_cause.as_deref().filter(|s| !s.is_empty()) {
        parts.push(format!("root cause: {rc}"));
    }
    if let Some(ra) = a.recommended_action.as_deref().filter(|s| !s.is_empty()) {
        parts.push(format!("recommended action: {ra}"));
    }
    parts.extend(message(common));
    join(parts)
}

/// `workflow <workflowName> <phase>. steps: <name> <phase>, <name> <phase>. <message>`
pub fn workflow(common: &Common, w: &WorkflowInput) -> String {
    let mut parts = vec![format!(
        "workflow {} {}",
        w.workflow_name.as_deref().unwrap_or_default(),
        common.phase.as_str()
    )];
    let steps: Vec<String> = w
        .step_statuses
        .iter()
        .flatten()
        .map(|s| {
            format!(
                "{} {}",
                s.name.as_deref().unwrap_or_default(),
                s.phase.map(|p| p.as_str()).unwrap_or_default()
            )
        })
        .collect();
    if !steps.is_empty() {
        parts.push(format!("steps: {}", steps.join(", ")));
    }
    parts.extend(message(common));
    join(parts)
}

/// `execution <phase>: action <actionType> on <targetType> <targetNamespace>/<targetName>.
/// result: <actionResult>. <message>`
pub fn execution(common: &Common, e: &ExecutionInput) -> String {
    let mut parts = vec![format!(
        "execution {}: action {} on {} {}/{}",
        common.phase.as_str(),
        e.action_type.as_deref().unwrap_or_default(),
        e.target_type.map(|t| t.as_str()).unwrap_or_default(),
        e.target_namespace.as_deref().unwrap_or_default(),
        e.target_name.as_deref().unwrap_or_default(),
    )];
    if let Some(r) = e.action_result {
        parts.push(format!("result: {}", r.as_str()));
    }
    parts.extend(message(common));
    join(parts)
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn texts_are_cut_to_the_bound_on_a_character_boundary_and_shorter_ones_kept() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_CHARS + 10);
        let cut = bounded(long.clone());
        assert_eq!(cut.chars().count(), MAX_CHARS);
        assert!(long.starts_with(&cut));
        assert_eq!(bounded(cut.clone()), cut, "deterministic and idempotent");
    }

    #[test]
    fn a_record_with_the_longest_message_embeds_a_bounded_text_and_keeps_its_message_whole() {
        let message = "x".repeat(10 * 1024);
        let record = serde_json::json!({
            "name": "rr-1", "namespace": "payments", "phase": "Failed",
            "createdAt": "2025-10-06T10:00:46.123456Z", "correlationId": "rr-2025-10-06-abc123",
            "signalType": "prometheus", "signalName": "KubePodOOMKilled", "signalNamespace": "monitoring",
            "targetType": "deployment", "targetName": "checkout-api", "targetNamespace": "payments",
            "message": message,
        });
        let r = crate::parse_record(crate::kind::Kind::Remediation, record)
            .unwrap_or_else(|e| panic!("valid record: {e}"));
        assert_eq!(r.embedding_text.chars().count(), MAX_CHARS);
        assert!(
            r.embedding_text
                .starts_with("remediation Failed: prometheus signal KubePodOOMKilled")
        );
        assert_eq!(r.common.message.as_deref().map(str::len), Some(10 * 1024));
    }
}
