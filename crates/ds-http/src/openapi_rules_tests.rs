//! The document against the domain, field by field: for every field of every request body (and every
//! query parameter of the list), values at and around each rule the document states — lengths,
//! patterns, bounds, enums, formats, item and entry counts, required, null, unknown names — plus
//! values drawn from each pattern and a fixed set of hostile ones. For each value, what a JSON Schema
//! validator says of the document (the `jsonschema` crate, draft 2020-12) must be what the domain's
//! own parser says. Any rule stated in one place and not the other fails here, naming the field and
//! the value.
//!
//! The rules that span fields (time order, workflow counts) are kept out of play by the base values
//! (times from 2000 on, `stepCount` at its maximum); `cargo xtask conformance` covers them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Deployment, document};
use ds_domain::kind::Kind;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};

const DEPLOYMENT: Deployment = Deployment {
    dimension: 8,
    batch_items: 1000,
};

/// The schema of `name` with every `$ref` of the document resolvable (the document's components are
/// carried along).
fn schema_of(doc: &Value, pointer: &str) -> Value {
    json!({"$ref": format!("#{pointer}"), "components": doc["components"].clone(),
           "paths": doc["paths"].clone()})
}

fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(
            doc,
            doc.pointer(r.trim_start_matches('#'))
                .unwrap_or(&Value::Null),
        ),
        None => s,
    }
}

/// The non-null alternative of a nullable schema (`oneOf [null, X]` or `type [T, null]`).
fn non_null<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    let s = resolve(doc, s);
    if let Some(alts) = s.get("oneOf").and_then(Value::as_array)
        && let Some(x) = alts.iter().find(|a| a.get("type") != Some(&json!("null")))
        && alts.len() == 2
    {
        return resolve(doc, x);
    }
    s
}

fn types(s: &Value) -> Vec<String> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn rng() -> TestRunner {
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    )
}

/// Strings drawn from `pattern` (anchors removed: the generator does not take them).
fn samples(pattern: &str, n: usize) -> Vec<String> {
    let bare = pattern.trim_start_matches('^').trim_end_matches('$');
    let Ok(strategy) = proptest::string::string_regex(bare) else {
        return Vec::new();
    };
    let mut runner = rng();
    (0..n)
        .filter_map(|_| strategy.new_tree(&mut runner).ok().map(|t| t.current()))
        .collect()
}

/// A value the document accepts for `s` (the first one found among its probes' seeds).
fn example(doc: &Value, s: &Value) -> Value {
    let s = non_null(doc, s);
    if let Some(e) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return e.clone();
    }
    let t = types(s);
    if t.iter().any(|t| t == "object") || s.get("properties").is_some() {
        let mut out = Map::new();
        for name in s["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            out.insert(name.to_owned(), example(doc, &s["properties"][name]));
        }
        return Value::Object(out);
    }
    if t.iter().any(|t| t == "array") {
        let n = s["minItems"].as_u64().unwrap_or(0);
        return Value::Array((0..n).map(|_| example(doc, &s["items"])).collect());
    }
    if t.iter().any(|t| t == "integer") {
        return json!(s["minimum"].as_i64().unwrap_or(0));
    }
    if t.iter().any(|t| t == "number") {
        return json!(s["minimum"].as_f64().map_or(0.5, |m| m.max(0.5)));
    }
    if t.iter().any(|t| t == "boolean") {
        return json!(true);
    }
    if s["format"] == "date-time" {
        return json!("2000-01-01T00:00:00Z");
    }
    let min = s["minLength"].as_u64().unwrap_or(0) as usize;
    let max = s["maxLength"].as_u64().unwrap_or(u64::MAX) as usize;
    if let Some(p) = s["pattern"].as_str() {
        let re = regex::Regex::new(p).unwrap();
        if let Some(x) = samples(p, 200)
            .into_iter()
            .chain(["a".repeat(min.max(1))])
            .find(|x| re.is_match(x) && (min..=max).contains(&x.chars().count()))
        {
            return json!(x);
        }
    }
    json!("a".repeat(min.max(1)))
}

/// Values at and around every rule `s` states, and hostile ones.
fn leaf_probes(doc: &Value, s: &Value) -> Vec<Value> {
    let s = non_null(doc, s);
    let mut out = vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1),
        json!(1.5),
        json!(2.0),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
    ];
    for e in s
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(e.clone());
        if let Some(e) = e.as_str() {
            out.push(json!(e.to_uppercase()));
            out.push(json!(format!(" {e}")));
        }
    }
    for key in ["minimum", "maximum"] {
        if let Some(b) = s.get(key) {
            if let Some(i) = b.as_i64() {
                out.extend([
                    json!(i),
                    json!(i.saturating_sub(1)),
                    json!(i.saturating_add(1)),
                ]);
                out.push(json!(i as f64 + 0.5));
                out.push(json!(i as f64 - 0.5));
            } else if let Some(f) = b.as_f64() {
                out.extend([json!(f), json!(f - 0.001), json!(f + 0.001)]);
            }
        }
    }
    out.extend([
        json!(i64::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
    ]);
    if s["format"] == "date-time" {
        for t in [
            "2000-01-01T00:00:00Z",
            "2030-06-30T23:59:59.123456+02:00",
            "2030-06-30T23:59:59.123456789-11:30",
            "2030-06-30t23:59:59z",
            "2030-06-30 23:59:59Z",
            "2030-06-30T23:59:59",
            "2030-06-30",
            "2030-13-01T00:00:00Z",
            "2030-02-30T00:00:00Z",
            "2030-06-30T24:00:00Z",
            "2030-06-30T23:59:60Z",
            "2030-06-30T23:59:59+24:00",
            "not a time",
        ] {
            out.push(json!(t));
        }
    }
    let min = s["minLength"].as_u64().map(|m| m as usize);
    let max = s["maxLength"].as_u64().map(|m| m as usize);
    let mut lengths = vec![1, 2, 64, 256];
    for m in [min, max].into_iter().flatten() {
        lengths.extend([m.saturating_sub(1), m, m + 1]);
    }
    for len in lengths {
        let fills: &[&str] = if len > 20_000 {
            &["A"]
        } else {
            &[
                "a", "A", "0", "-", "é", "😀", " ", "\t", "\u{7}", "\u{0}", "\u{85}", "<b>",
            ]
        };
        for fill in fills {
            let mut s: String = fill.repeat(len.div_ceil(fill.chars().count().max(1)));
            s = s.chars().take(len).collect();
            out.push(json!(s));
        }
    }
    if let Some(p) = s["pattern"].as_str() {
        for x in samples(p, 40) {
            out.push(json!(format!("{x}-")));
            out.push(json!(format!(" {x}")));
            out.push(json!(x.to_uppercase()));
            out.push(json!(format!("{x}\u{7}")));
            out.push(json!(x));
        }
    }
    out
}

/// Whole values for `s`: an example with each property probed in turn (recursively), left out,
/// and joined by an unknown one; arrays empty, full and over full; leaves probed.
fn probes(doc: &Value, s: &Value, depth: usize) -> Vec<Value> {
    let r = non_null(doc, s);
    if let Some(props) = r.get("properties").and_then(Value::as_object) {
        let base = example(doc, r);
        let mut out = vec![base.clone(), Value::Null, json!("x"), json!([])];
        for (name, p) in props {
            let mut without = base.clone();
            without.as_object_mut().unwrap().remove(name);
            out.push(without);
            for v in probes(doc, p, depth + 1) {
                let mut with = base.clone();
                with[name.as_str()] = v;
                out.push(with);
            }
        }
        for (k, v) in [
            ("extra", json!("kept")),
            ("extra", json!("nul \u{0} inside")),
            ("extra", json!({"a": [1, "b", null, {"c": "\u{0}"}]})),
            (
                "extra",
                json!({"deep": {"deeper": [true, 2.5, "<i>x</i>"]}}),
            ),
            ("nul\u{0}name", json!(1)),
            ("", json!(1)),
        ] {
            let mut with = base.clone();
            with[k] = v;
            out.push(with);
        }
        return out;
    }
    if types(r).iter().any(|t| t == "array") {
        let item = example(doc, &r["items"]);
        let mut out = leaf_probes(doc, r);
        let sizes = [
            r["minItems"].as_u64(),
            r["maxItems"].as_u64(),
            r["maxItems"].as_u64().map(|m| m + 1),
            Some(1),
        ];
        for n in sizes.into_iter().flatten() {
            out.push(Value::Array(vec![item.clone(); n as usize]));
        }
        if depth < 2 {
            for v in probes(doc, &r["items"], depth + 1).into_iter().take(400) {
                let mut one =
                    vec![item.clone(); r["minItems"].as_u64().unwrap_or(1).max(1) as usize];
                one[0] = v;
                out.push(Value::Array(one));
            }
        }
        return out;
    }
    if r.get("additionalProperties").is_some() && types(r).iter().any(|t| t == "object") {
        // A map of strings.
        let mut out = leaf_probes(doc, r);
        let max = r["maxProperties"].as_u64().unwrap_or(64) as usize;
        let key = &r["propertyNames"];
        let value = &r["additionalProperties"];
        for n in [0, 1, max, max + 1] {
            let m: Map<String, Value> = (0..n).map(|i| (format!("k{i}"), json!("v"))).collect();
            out.push(Value::Object(m));
        }
        for k in leaf_probes(doc, key)
            .into_iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
        {
            out.push(json!({ k: "v" }));
        }
        for v in leaf_probes(doc, value) {
            out.push(json!({ "k": v }));
        }
        return out;
    }
    leaf_probes(doc, r)
}

/// Every probe of `pointer`'s schema: the document's verdict against `domain`'s; the differences.
fn compare(
    doc: &Value,
    pointer: &str,
    base: impl Fn(Value) -> Value,
    domain: impl Fn(&Value) -> bool,
) -> (usize, Vec<String>) {
    // Formats are checked too (in 2020-12 they are only annotations unless asked for), as
    // schemathesis and generated clients do.
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema_of(doc, pointer))
        .unwrap();
    let schema = doc.pointer(pointer).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut differences = Vec::new();
    for probe in probes(doc, schema, 0).into_iter().map(base) {
        if !seen.insert(probe.to_string()) {
            continue;
        }
        let by_document = validator.is_valid(&probe);
        let by_domain = domain(&probe);
        if by_document != by_domain {
            let shown: String = probe.to_string().chars().take(300).collect();
            differences.push(format!(
                "{pointer}: the document says {}, the domain {}: {shown}",
                verdict(by_document),
                verdict(by_domain)
            ));
        }
    }
    (seen.len(), differences)
}

fn verdict(valid: bool) -> &'static str {
    if valid { "valid" } else { "invalid" }
}

#[test]
fn every_body_rule_of_the_document_is_the_domains() {
    let doc = document(DEPLOYMENT);
    let mut all = Vec::new();
    let mut probed = 0;
    for (name, kind) in [
        ("RemediationRecord", Kind::Remediation),
        ("AiAnalysisRecord", Kind::AiAnalysis),
        ("WorkflowRecord", Kind::Workflow),
        ("ExecutionRecord", Kind::Execution),
    ] {
        let (n, d) = compare(
            &doc,
            &format!("/components/schemas/{name}"),
            |mut r| {
                // Keep the rules that span fields out of play (see the module's comment).
                if kind == Kind::Workflow && r.get("stepCount").is_some_and(|c| c == 1) {
                    r["stepCount"] = json!(i64::MAX);
                }
                r
            },
            |r| ds_domain::parse_record(kind, r.clone()).is_ok(),
        );
        probed += n;
        all.extend(d);
    }
    let dimension = DEPLOYMENT.dimension;
    let (n, d) = compare(
        &doc,
        "/components/schemas/SearchBody",
        |b| b,
        |b| {
            // The service adds one rule to the domain's: a vector of the model's dimension.
            ds_domain::search::parse_search(b.clone()).is_ok_and(|s| match s.by {
                ds_domain::search::SearchBy::Vector(v) => v.len() == dimension,
                ds_domain::search::SearchBy::Text(_) => true,
            })
        },
    );
    probed += n;
    all.extend(d);
    let (n, d) = compare(
        &doc,
        "/components/schemas/HoldBody",
        |b| b,
        |b| ds_domain::retention::parse_hold(b.clone()).is_ok(),
    );
    probed += n;
    all.extend(d);
    let (n, d) = compare(
        &doc,
        "/components/schemas/ReleaseBody",
        |b| b,
        |b| ds_domain::retention::parse_release(b.clone()).is_ok(),
    );
    probed += n;
    all.extend(d);
    assert!(probed > 5_000, "only {probed} probes");
    assert!(
        all.is_empty(),
        "{} of {probed} probes differ:\n{}",
        all.len(),
        all.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}
