//! One canonical form of a record, used for its content digest (idempotency without a key) everywhere.
//!
//! Canonical JSON: object keys sorted by their UTF-8 bytes at every depth, no insignificant whitespace,
//! strings and numbers as serde_json writes them. The result does not depend on the order in which the
//! client sent the keys, nor on whether serde_json's `preserve_order` feature is on.

use crate::kind::Kind;
use crate::record::Common;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Writes `v` in canonical form.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(item) = m.get(k) {
                    canonical_json(item, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The content digest of a record (contract §2.9).
pub fn canonical_digest(
    kind: Kind,
    common: &Common,
    details: &Map<String, Value>,
    unknown: &Map<String, Value>,
) -> Sha256Digest {
    let mut whole = Map::new();
    whole.insert("kind".into(), Value::String(kind.as_str().into()));
    whole.insert(
        "common".into(),
        serde_json::to_value(common).unwrap_or(Value::Null),
    );
    whole.insert("details".into(), Value::Object(details.clone()));
    whole.insert("unknown".into(), Value::Object(unknown.clone()));
    let mut text = String::new();
    canonical_json(&Value::Object(whole), &mut text);
    Sha256::digest(text.as_bytes()).into()
}

/// The key of a stored embedding: SHA-256 of (model identity, NUL, text). Records whose embedding text
/// is identical under the same model share one stored vector (contract §5).
pub fn embedding_digest(model_id: &str, text: &str) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(model_id.as_bytes());
    h.update([0u8]);
    h.update(text.as_bytes());
    h.finalize().into()
}

/// SHA-256 of any bytes.
pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_does_not_change_the_canonical_form() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":"s"}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#).unwrap();
        let (mut ca, mut cb) = (String::new(), String::new());
        canonical_json(&a, &mut ca);
        canonical_json(&b, &mut cb);
        assert_eq!(ca, cb);
        assert_eq!(ca, r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#);
    }

    #[test]
    fn embedding_digest_separates_model_and_text() {
        assert_ne!(embedding_digest("ab", "c"), embedding_digest("a", "bc"));
        assert_eq!(embedding_digest("m", "t"), embedding_digest("m", "t"));
    }
}
