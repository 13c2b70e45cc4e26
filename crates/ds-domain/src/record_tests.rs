//! Every rule of contract §2: the valid boundary and the first invalid value, with the constraint that
//! must be reported.

use super::*;
use rstest::rstest;
use serde_json::json;

fn base(kind: Kind) -> Value {
    let common = json!({
        "name": "rr-1", "namespace": "payments", "phase": "Pending",
        "createdAt": "2025-10-06T10:00:00Z", "correlationId": "rr-2025-10-06-abc123"
    });
    let spec = match kind {
        Kind::Remediation => json!({
            "signalType": "prometheus", "signalName": "KubePodOOMKilled", "signalNamespace": "monitoring",
            "targetType": "pod", "targetName": "api-1", "targetNamespace": "payments"
        }),
        Kind::AiAnalysis => json!({"remediationRequestRef": "rr-1"}),
        Kind::Workflow => {
            json!({"remediationRequestRef": "rr-1", "workflowName": "restart", "stepCount": 3})
        }
        Kind::Execution => json!({
            "workflowExecutionRef": "wf-1", "actionType": "restart_pod",
            "targetType": "pod", "targetName": "api-1", "targetNamespace": "payments"
        }),
    };
    let mut m = common.as_object().cloned().unwrap_or_default();
    m.extend(spec.as_object().cloned().unwrap_or_default());
    Value::Object(m)
}

/// Sets (or removes, with `None`) one field of the base record of `kind` and validates it.
fn check(kind: Kind, field: &str, value: Option<Value>) -> Result<ValidRecord, Vec<Violation>> {
    let mut v = base(kind);
    match value {
        Some(x) => v[field] = x,
        None => {
            v.as_object_mut().map(|m| m.remove(field));
        }
    }
    match parse_record(kind, v) {
        Ok(r) => Ok(r),
        Err(AuditError::Validation(v)) => Err(v),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

fn labels(n: usize, key_len: usize, value_len: usize) -> Value {
    let mut m = Map::new();
    for i in 0..n {
        let mut k = format!("k{i}-");
        while k.len() < key_len {
            k.push('x');
        }
        m.insert(k, Value::String("v".repeat(value_len)));
    }
    Value::Object(m)
}

fn steps(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("s{i}"), "phase": "Pending", "retryCount": 0}))
            .collect(),
    )
}

fn b64(len: usize) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(vec![7u8; len]))
}

#[rstest]
// common fields
#[case::name_max(Kind::Remediation, "name", json!("a".repeat(255)))]
#[case::name_single_char(Kind::Remediation, "name", json!("a"))]
#[case::name_inner_dash(Kind::Remediation, "name", json!("a-0"))]
#[case::namespace_max(Kind::Remediation, "namespace", json!("n".repeat(63)))]
#[case::phase_processing(Kind::Remediation, "phase", json!("Processing"))]
#[case::phase_completed(Kind::Remediation, "phase", json!("Completed"))]
#[case::phase_failed(Kind::Remediation, "phase", json!("Failed"))]
#[case::message_max(Kind::Remediation, "message", json!("m".repeat(10 * 1024)))]
#[case::created_offset(Kind::Remediation, "createdAt", json!("2025-10-06T12:00:00+02:00"))]
#[case::started_equal(Kind::Remediation, "startedAt", json!("2025-10-06T10:00:00Z"))]
#[case::completed_equal(Kind::Remediation, "completedAt", json!("2025-10-06T10:00:00Z"))]
// remediation
#[case::signal_event(Kind::Remediation, "signalType", json!("kubernetes-event"))]
#[case::signal_name_max(Kind::Remediation, "signalName", json!("s".repeat(255)))]
#[case::target_deployment(Kind::Remediation, "targetType", json!("deployment"))]
#[case::target_statefulset(Kind::Remediation, "targetType", json!("statefulset"))]
#[case::target_daemonset(Kind::Remediation, "targetType", json!("daemonset"))]
#[case::environment(Kind::Remediation, "environment", json!("staging"))]
#[case::priority(Kind::Remediation, "priority", json!("P0"))]
#[case::fingerprint(Kind::Remediation, "fingerprint", json!("a".repeat(64)))]
#[case::fingerprint_prefixed(Kind::Remediation, "fingerprint", json!(format!("sha256:{}", "A".repeat(64))))]
#[case::reason_max(Kind::Remediation, "reason", json!("r".repeat(255)))]
#[case::labels_max(Kind::Remediation, "labels", labels(64, 8, 1))]
#[case::label_key_max(Kind::Remediation, "labels", labels(1, 317, 1))]
#[case::label_value_max(Kind::Remediation, "labels", labels(1, 4, 1024))]
#[case::payload_max(Kind::Remediation, "originalPayload", b64(1024 * 1024))]
// aianalysis
#[case::provider(Kind::AiAnalysis, "llmProvider", json!("anthropic"))]
#[case::model_max(Kind::AiAnalysis, "llmModel", json!("m".repeat(100)))]
#[case::temperature_max(Kind::AiAnalysis, "temperature", json!(2.0))]
#[case::temperature_min(Kind::AiAnalysis, "temperature", json!(0.0))]
#[case::confidence_max(Kind::AiAnalysis, "confidence", json!(1.0))]
#[case::tokens_min(Kind::AiAnalysis, "tokensUsed", json!(1))]
#[case::time_min(Kind::AiAnalysis, "investigationTimeSeconds", json!(0))]
#[case::context(Kind::AiAnalysis, "signalContext", labels(64, 4, 1024))]
// workflow
#[case::step_count_min(Kind::Workflow, "stepCount", json!(1))]
#[case::current_step_max(Kind::Workflow, "currentStep", json!(3))]
#[case::completed_all(Kind::Workflow, "completedCount", json!(3))]
#[case::steps_max(Kind::Workflow, "stepStatuses", steps(1000))]
// execution
#[case::action_type_max(Kind::Execution, "actionType", json!("a".repeat(100)))]
#[case::result(Kind::Execution, "actionResult", json!("failure"))]
#[case::version_max(Kind::Execution, "resourceVersion", json!("1".repeat(100)))]
#[case::warnings_max(Kind::Execution, "validationWarnings", json!(vec!["w"; 100]))]
#[case::action_data(Kind::Execution, "actionData", labels(64, 4, 1024))]
fn valid_boundaries_pass(#[case] kind: Kind, #[case] field: &str, #[case] value: Value) {
    if let Err(v) = check(kind, field, Some(value)) {
        panic!("{kind}.{field} should pass: {v:?}");
    }
}

#[rstest]
// common fields
#[case::name_missing(Kind::Remediation, "name", None, "required")]
#[case::name_empty(Kind::Remediation, "name", Some(json!("")), "required")]
#[case::name_too_long(Kind::Remediation, "name", Some(json!("a".repeat(256))), "maxLength")]
#[case::name_upper(Kind::Remediation, "name", Some(json!("Api")), "pattern")]
#[case::name_leading_dash(Kind::Remediation, "name", Some(json!("-api")), "pattern")]
#[case::name_trailing_dash(Kind::Remediation, "name", Some(json!("api-")), "pattern")]
#[case::name_not_string(Kind::Remediation, "name", Some(json!(42)), "type")]
#[case::namespace_missing(Kind::Remediation, "namespace", None, "required")]
#[case::namespace_too_long(Kind::Remediation, "namespace", Some(json!("n".repeat(64))), "maxLength")]
#[case::namespace_dot(Kind::Remediation, "namespace", Some(json!("a.b")), "pattern")]
#[case::phase_missing(Kind::Remediation, "phase", None, "required")]
#[case::phase_unknown(Kind::Remediation, "phase", Some(json!("Done")), "enum")]
#[case::phase_lowercase(Kind::Remediation, "phase", Some(json!("pending")), "enum")]
#[case::message_too_long(Kind::Remediation, "message", Some(json!("m".repeat(10 * 1024 + 1))), "maxLength")]
#[case::created_missing(Kind::Remediation, "createdAt", None, "required")]
#[case::created_no_offset(Kind::Remediation, "createdAt", Some(json!("2025-10-06T10:00:00")), "type")]
#[case::created_date_only(Kind::Remediation, "createdAt", Some(json!("2025-10-06")), "type")]
#[case::started_before(Kind::Remediation, "startedAt", Some(json!("2025-10-06T09:59:59.999999Z")), "notBefore")]
#[case::completed_before(Kind::Remediation, "completedAt", Some(json!("2025-10-06T09:59:59Z")), "notBefore")]
#[case::correlation_missing(Kind::Remediation, "correlationId", None, "required")]
#[case::correlation_short(Kind::Remediation, "correlationId", Some(json!("rr-2025-10-06-abc12")), "pattern")]
#[case::correlation_upper(Kind::Remediation, "correlationId", Some(json!("rr-2025-10-06-ABC123")), "pattern")]
#[case::correlation_unicode_digits(Kind::Remediation, "correlationId", Some(json!("rr-٢٠٢٥-10-06-abc123")), "pattern")]
// remediation
#[case::signal_missing(Kind::Remediation, "signalType", None, "required")]
#[case::signal_unknown(Kind::Remediation, "signalType", Some(json!("alertmanager")), "enum")]
#[case::signal_name_too_long(Kind::Remediation, "signalName", Some(json!("s".repeat(256))), "maxLength")]
#[case::signal_name_nul(Kind::Remediation, "signalName", Some(json!("a\u{0}b")), "noControlChars")]
#[case::signal_namespace_bad(Kind::Remediation, "signalNamespace", Some(json!("Mon")), "pattern")]
#[case::target_unknown(Kind::Remediation, "targetType", Some(json!("job")), "enum")]
#[case::target_name_missing(Kind::Remediation, "targetName", None, "required")]
#[case::target_namespace_missing(Kind::Remediation, "targetNamespace", None, "required")]
#[case::environment_unknown(Kind::Remediation, "environment", Some(json!("qa")), "enum")]
#[case::priority_unknown(Kind::Remediation, "priority", Some(json!("P3")), "enum")]
#[case::fingerprint_short(Kind::Remediation, "fingerprint", Some(json!("a".repeat(63))), "pattern")]
#[case::fingerprint_not_hex(Kind::Remediation, "fingerprint", Some(json!("g".repeat(64))), "pattern")]
#[case::reason_too_long(Kind::Remediation, "reason", Some(json!("r".repeat(256))), "maxLength")]
#[case::labels_too_many(Kind::Remediation, "labels", Some(labels(65, 8, 1)), "maxItems")]
#[case::label_key_too_long(Kind::Remediation, "labels", Some(labels(1, 318, 1)), "keyLength")]
#[case::label_value_too_long(Kind::Remediation, "labels", Some(labels(1, 4, 1025)), "valueLength")]
#[case::labels_not_strings(Kind::Remediation, "labels.a", Some(json!({"a": 1})), "type")]
#[case::payload_too_big(Kind::Remediation, "originalPayload", Some(b64(1024 * 1024 + 3)), "maxLength")]
#[case::payload_not_base64(Kind::Remediation, "originalPayload", Some(json!("not base64!")), "base64")]
// aianalysis
#[case::ref_missing(Kind::AiAnalysis, "remediationRequestRef", None, "required")]
#[case::ref_too_long(Kind::AiAnalysis, "remediationRequestRef", Some(json!("r".repeat(256))), "maxLength")]
#[case::provider_unknown(Kind::AiAnalysis, "llmProvider", Some(json!("azure")), "enum")]
#[case::model_too_long(Kind::AiAnalysis, "llmModel", Some(json!("m".repeat(101))), "maxLength")]
#[case::temperature_high(Kind::AiAnalysis, "temperature", Some(json!(2.01)), "maximum")]
#[case::temperature_negative(Kind::AiAnalysis, "temperature", Some(json!(-0.01)), "minimum")]
#[case::confidence_high(Kind::AiAnalysis, "confidence", Some(json!(1.01)), "maximum")]
#[case::confidence_negative(Kind::AiAnalysis, "confidence", Some(json!(-0.1)), "minimum")]
#[case::tokens_zero(Kind::AiAnalysis, "tokensUsed", Some(json!(0)), "minimum")]
#[case::tokens_fraction(Kind::AiAnalysis, "tokensUsed", Some(json!(1.5)), "type")]
#[case::time_negative(Kind::AiAnalysis, "investigationTimeSeconds", Some(json!(-1)), "minimum")]
#[case::approval_not_bool(Kind::AiAnalysis, "requiresApproval", Some(json!("yes")), "type")]
// workflow
#[case::workflow_name_missing(Kind::Workflow, "workflowName", None, "required")]
#[case::step_count_missing(Kind::Workflow, "stepCount", None, "required")]
#[case::step_count_zero(Kind::Workflow, "stepCount", Some(json!(0)), "minimum")]
#[case::current_step_over(Kind::Workflow, "currentStep", Some(json!(4)), "maximum")]
#[case::current_step_negative(Kind::Workflow, "currentStep", Some(json!(-1)), "minimum")]
#[case::completed_negative(Kind::Workflow, "completedCount", Some(json!(-1)), "minimum")]
#[case::counts_over(Kind::Workflow, "completedCount", Some(json!(4)), "sumAtMostStepCount")]
#[case::steps_too_many(Kind::Workflow, "stepStatuses", Some(steps(1001)), "maxLength")]
// execution
#[case::exec_ref_missing(Kind::Execution, "workflowExecutionRef", None, "required")]
#[case::action_type_too_long(Kind::Execution, "actionType", Some(json!("a".repeat(101))), "maxLength")]
#[case::exec_target_missing(Kind::Execution, "targetType", None, "required")]
#[case::result_unknown(Kind::Execution, "actionResult", Some(json!("partial")), "enum")]
#[case::version_too_long(Kind::Execution, "resourceVersion", Some(json!("1".repeat(101))), "maxLength")]
#[case::previous_too_long(Kind::Execution, "previousVersion", Some(json!("1".repeat(101))), "maxLength")]
#[case::warnings_too_many(Kind::Execution, "validationWarnings", Some(json!(vec!["w"; 101])), "maxLength")]
fn first_invalid_values_fail(
    #[case] kind: Kind,
    #[case] field: &str,
    #[case] value: Option<Value>,
    #[case] constraint: &str,
) {
    // `field` may name a path below the field that is set (`labels.a`).
    let top = field.split('.').next().unwrap_or(field);
    let violations = check(kind, top, value)
        .err()
        .unwrap_or_else(|| panic!("{kind}.{field} should fail"));
    assert!(
        violations
            .iter()
            .any(|v| v.field == field && v.constraint == constraint && !v.message.is_empty()),
        "{kind}.{field}: expected {constraint}, got {violations:?}"
    );
    assert!(
        violations.iter().all(|v| v.field.starts_with(top)),
        "only the field that was broken is reported: {violations:?}"
    );
}

#[test]
fn nested_step_violations_carry_their_path() {
    let mut v = base(Kind::Workflow);
    v["stepStatuses"] = json!([
        {"name": "a", "phase": "Pending", "retryCount": 0},
        {"name": "b", "phase": "Pending", "retryCount": -1,
         "startedAt": "2025-10-06T10:00:01Z", "completedAt": "2025-10-06T10:00:00Z"}
    ]);
    let Err(AuditError::Validation(violations)) = parse_record(Kind::Workflow, v) else {
        panic!("must fail")
    };
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"stepStatuses[1].retryCount"), "{fields:?}");
    assert!(
        fields.contains(&"stepStatuses[1].completedAt"),
        "{fields:?}"
    );

    let mut v = base(Kind::Workflow);
    v["stepStatuses"] = json!([{"name": "a", "phase": "Nope", "retryCount": 0}]);
    let Err(AuditError::Validation(violations)) = parse_record(Kind::Workflow, v) else {
        panic!("must fail")
    };
    assert_eq!(violations[0].field, "stepStatuses[0].phase");
    assert_eq!(violations[0].constraint, "enum");
}

#[test]
fn free_text_is_sanitized_and_identifiers_are_not_touched() {
    let mut v = base(Kind::AiAnalysis);
    v["message"] = json!("  <b>OOM</b>\u{0} killed  ");
    v["rootCause"] = json!("<script>x()</script>memory limit too low");
    let r = parse_record(Kind::AiAnalysis, v).unwrap();
    assert_eq!(r.common.message.as_deref(), Some("OOM killed"));
    assert_eq!(r.details["rootCause"], "memory limit too low");
}

#[test]
fn the_fingerprint_is_stored_without_prefix_in_lower_case() {
    let r = check(
        Kind::Remediation,
        "fingerprint",
        Some(json!(format!("sha256:{}", "AB".repeat(32)))),
    )
    .unwrap();
    assert_eq!(r.details["fingerprint"], "ab".repeat(32));
}

#[test]
fn the_content_digest_ignores_key_order_and_offsets_but_not_content() {
    let a = parse_record(Kind::Remediation, base(Kind::Remediation)).unwrap();
    let mut shifted = base(Kind::Remediation);
    shifted["createdAt"] = json!("2025-10-06T11:00:00+01:00");
    let b = parse_record(Kind::Remediation, shifted).unwrap();
    assert_eq!(a.content_digest, b.content_digest);
    let mut other = base(Kind::Remediation);
    other["unknownExtra"] = json!(1);
    let c = parse_record(Kind::Remediation, other).unwrap();
    assert_ne!(
        a.content_digest, c.content_digest,
        "unknown fields are content too"
    );
    let same_fields_other_kind = parse_record(Kind::Execution, base(Kind::Execution)).unwrap();
    assert_ne!(a.content_digest, same_fields_other_kind.content_digest);
}

#[test]
fn embedding_text_is_deterministic_and_says_what_happened() {
    let mut v = base(Kind::Remediation);
    v["message"] = json!("Pod restarted after OOMKill");
    v["reason"] = json!("memory limit exceeded");
    let a = parse_record(Kind::Remediation, v.clone()).unwrap();
    v["name"] = json!("another-name");
    v["correlationId"] = json!("rr-2025-10-07-zzz999");
    let b = parse_record(Kind::Remediation, v).unwrap();
    assert_eq!(
        a.embedding_text,
        "remediation Pending: prometheus signal KubePodOOMKilled in namespace monitoring. \
         target pod payments/api-1. reason: memory limit exceeded. Pod restarted after OOMKill"
    );
    assert_eq!(
        a.embedding_text, b.embedding_text,
        "identity fields are not embedded"
    );
}

#[test]
fn a_non_object_is_invalid_json() {
    assert!(matches!(
        parse_record(Kind::Workflow, json!([1])),
        Err(AuditError::InvalidJson(_))
    ));
}
