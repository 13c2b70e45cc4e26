//! One canonical form of a record, used for its content digest (idempotency without a key) everywhere.
//!
//! Canonical JSON: object keys sorted by their UTF-8 bytes at every depth, no insignificant whitespace,
//! strings and numbers as serde_json writes them. The result does not depend on the order in which the
//! client sent the keys, nor on whether serde_json's `preserve_order` feature is on.

use crate::kind::Kind;
use crate::record::Common;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::{self, Write};

pub use ds_tlog::canonical::{write_canonical, write_object};

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Writes `v` in canonical form.
pub fn canonical_json(v: &Value, out: &mut String) {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail, nor can serializing a `Value`; serde_json writes UTF-8.
    let _ = write_canonical(v, &mut bytes);
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// The content digest of a record (contract §2.9): SHA-256 of the canonical JSON of
/// `{"common": …, "details": …, "kind": …, "unknown": …}`, streamed into the hasher (no copy of the
/// record, no intermediate text: this runs once per record on the write path).
pub fn canonical_digest(
    kind: Kind,
    common: &Common,
    details: &Map<String, Value>,
    unknown: &Map<String, Value>,
) -> Sha256Digest {
    let common = serde_json::to_value(common).unwrap_or(Value::Null);
    let mut h = Sha256::new();
    // Writing into a hasher cannot fail, nor can serializing a `Value` or a `str`: the error is
    // impossible, and the digest stays total.
    let _ = write_record(&mut h, kind, &common, details, unknown);
    h.finalize().into()
}

/// The top-level object of [`canonical_digest`], its keys in byte order.
fn write_record<W: Write>(
    out: &mut W,
    kind: Kind,
    common: &Value,
    details: &Map<String, Value>,
    unknown: &Map<String, Value>,
) -> io::Result<()> {
    out.write_all(br#"{"common":"#)?;
    write_canonical(common, out)?;
    out.write_all(br#","details":"#)?;
    write_object(details, out)?;
    out.write_all(br#","kind":"#)?;
    serde_json::to_writer(&mut *out, kind.as_str())?;
    out.write_all(br#","unknown":"#)?;
    write_object(unknown, out)?;
    out.write_all(b"}")
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
    fn the_streamed_digest_is_the_digest_of_the_canonical_text() {
        // The stored digests of earlier versions came from the canonical text of the whole record;
        // streaming it into the hasher must give the same bytes, escapes and numbers included.
        let common = Common {
            name: "ns-\"q\"\u{0}é".into(),
            namespace: "default".into(),
            phase: crate::kind::Phase::Completed,
            message: Some("a\nb 😀 </script>".into()),
            created_at: crate::time::Timestamp::now(),
            started_at: None,
            completed_at: Some(crate::time::Timestamp::now()),
            correlation_id: "rr-1".into(),
        };
        let details: Map<String, Value> = serde_json::from_str(
            r#"{"z":[1,2.5,-3e-7,{"b":null,"a":true}],"a":"\u001f<b>","ü":{"y":1,"x":[]}}"#,
        )
        .unwrap();
        let unknown: Map<String, Value> =
            serde_json::from_str(r#"{"extra":{"k2":1,"k1":"v"},"big":18446744073709551615}"#)
                .unwrap();
        let mut whole = Map::new();
        whole.insert(
            "kind".into(),
            Value::String(Kind::Execution.as_str().into()),
        );
        whole.insert("common".into(), serde_json::to_value(&common).unwrap());
        whole.insert("details".into(), Value::Object(details.clone()));
        whole.insert("unknown".into(), Value::Object(unknown.clone()));
        let mut text = String::new();
        canonical_json(&Value::Object(whole), &mut text);
        assert_eq!(
            canonical_digest(Kind::Execution, &common, &details, &unknown),
            sha256(text.as_bytes())
        );
        assert_ne!(
            canonical_digest(Kind::Workflow, &common, &details, &unknown),
            sha256(text.as_bytes()),
            "the kind is part of the digest"
        );
    }

    #[test]
    fn embedding_digest_separates_model_and_text() {
        assert_ne!(embedding_digest("ab", "c"), embedding_digest("a", "bc"));
        assert_eq!(embedding_digest("m", "t"), embedding_digest("m", "t"));
    }
}
