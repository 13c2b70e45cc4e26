//! What one leaf of the log commits to.

use crate::canonical::write_object;
use serde_json::{Map, Value};
use std::io;
use tlog_tiles::{Hash, record_hash};

/// A record as the log sees it: its identity (kind, id), the instant the store received it (UTC,
/// microseconds, as reads show it) and every field as written. Derived state (the embedding link)
/// is not part of it.
#[derive(Debug, Clone, Copy)]
pub struct Leaf<'a> {
    pub kind: &'a str,
    pub id: i64,
    pub received_at: &'a str,
    pub record: &'a Map<String, Value>,
}

impl Leaf<'_> {
    /// The leaf's bytes: the canonical JSON of `{"id","kind","receivedAt","record"}` (keys in
    /// byte order at every depth, no whitespace). The record's fields sit under `record`, so an
    /// unknown field called `id` or `kind` cannot collide with the identity.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        // Writing into a Vec cannot fail, nor can serializing an integer, a str or a Value.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(br#"{"id":"#);
        serde_json::to_writer(&mut *out, &self.id)?;
        out.extend_from_slice(br#","kind":"#);
        serde_json::to_writer(&mut *out, self.kind)?;
        out.extend_from_slice(br#","receivedAt":"#);
        serde_json::to_writer(&mut *out, self.received_at)?;
        out.extend_from_slice(br#","record":"#);
        write_object(self.record, out)?;
        out.push(b'}');
        Ok(())
    }

    /// The RFC 6962 leaf hash: SHA-256(0x00 ‖ bytes).
    pub fn hash(&self) -> Hash {
        record_hash(&self.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_is_the_canonical_form_with_the_identity_beside_the_fields() {
        let record: Map<String, Value> = serde_json::from_str(
            r#"{"name":"n","id":"not-the-id","a":{"z":1,"b":[2,{"y":0,"c":1}]}}"#,
        )
        .unwrap();
        let leaf = Leaf {
            kind: "workflow",
            id: 42,
            received_at: "2026-11-30T12:00:00.000001Z",
            record: &record,
        };
        assert_eq!(
            String::from_utf8(leaf.bytes()).unwrap(),
            r#"{"id":42,"kind":"workflow","receivedAt":"2026-11-30T12:00:00.000001Z","record":{"a":{"b":[2,{"c":1,"y":0}],"z":1},"id":"not-the-id","name":"n"}}"#
        );
        // SHA-256(0x00 ‖ bytes), computed here by hand with sha2 0.11 (not the crate we hash with).
        use sha2_next::Digest;
        let mut h = sha2_next::Sha256::new();
        h.update([0u8]);
        h.update(leaf.bytes());
        assert_eq!(leaf.hash().0.as_slice(), h.finalize().as_slice());
    }

    #[test]
    fn every_part_of_the_leaf_changes_its_hash() {
        let record: Map<String, Value> = serde_json::from_str(r#"{"name":"n"}"#).unwrap();
        let other: Map<String, Value> = serde_json::from_str(r#"{"name":"m"}"#).unwrap();
        let base = Leaf {
            kind: "workflow",
            id: 1,
            received_at: "2026-11-30T12:00:00.000000Z",
            record: &record,
        };
        let variants = [
            Leaf {
                kind: "execution",
                ..base
            },
            Leaf { id: 2, ..base },
            Leaf {
                received_at: "2026-11-30T12:00:00.000001Z",
                ..base
            },
            Leaf {
                record: &other,
                ..base
            },
        ];
        for v in variants {
            assert_ne!(v.hash(), base.hash(), "{v:?}");
        }
    }
}
