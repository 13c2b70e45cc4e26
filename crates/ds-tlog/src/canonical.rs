//! The one canonical JSON form: object keys sorted by their UTF-8 bytes at every depth, no
//! insignificant whitespace, strings and numbers as serde_json writes them. The result depends
//! neither on the order in which a client sent the keys nor on serde_json's `preserve_order` feature.
//!
//! Record digests (idempotency) and log leaves both use it; `ds_domain::digest` re-exports it.

use serde_json::{Map, Value};
use std::io::{self, Write};

/// Writes `v` in canonical form into any writer (a hasher, a buffer).
pub fn write_canonical<W: Write>(v: &Value, out: &mut W) -> io::Result<()> {
    match v {
        Value::Object(m) => write_object(m, out),
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        other => Ok(serde_json::to_writer(&mut *out, other)?),
    }
}

/// Writes an object in canonical form.
pub fn write_object<W: Write>(m: &Map<String, Value>, out: &mut W) -> io::Result<()> {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.write_all(b"{")?;
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, k)?;
        out.write_all(b":")?;
        write_canonical(v, out)?;
    }
    out.write_all(b"}")
}
