//! Checkpoints: C2SP `tlog-checkpoint` bodies (origin, size, base64 root) in C2SP `signed-note`
//! envelopes with Ed25519 signatures, on the `signed_note` crate (a port of Go's `sumdb/note`).
//!
//! Keys use Go's note key encoding: the private key `PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖
//! seed)>`, the verifier key `<name>+<key id>+<base64(0x01 ‖ public key)>`, key id = the first 4
//! bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key). Checkpoints signed by an earlier key verify as
//! long as its verifier key stays configured.

use crate::{Hash, TlogError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use signed_note::{
    Note, NoteError, Signature, StandardSigner, StandardVerifier, Verifier, VerifierList,
};
use tlog_tiles::checkpoint::Checkpoint;

const ALG_ED25519: u8 = 1;

/// Signs checkpoints for one log.
#[derive(Clone)]
pub struct CheckpointSigner {
    origin: String,
    signer: StandardSigner,
    verifier_key: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("CheckpointSigner")
            .field("origin", &self.origin)
            .field("verifier_key", &self.verifier_key)
            .finish()
    }
}

impl CheckpointSigner {
    /// A signer for the log `origin` (the checkpoint's first line) from a private key in note
    /// encoding (surrounding whitespace ignored).
    pub fn new(origin: &str, private_key: &str) -> Result<Self, TlogError> {
        let private_key = private_key.trim();
        if origin.is_empty() || origin.contains('\n') {
            return Err(TlogError::Key(
                "the log origin must be one non-empty line".into(),
            ));
        }
        let signer = StandardSigner::new(private_key)
            .map_err(|e| TlogError::Key(format!("the signing key: {e}")))?;
        let verifier_key = verifier_key_of(private_key)?;
        Ok(Self {
            origin: origin.to_owned(),
            signer,
            verifier_key,
        })
    }

    /// The verifier key (public) an auditor configures.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The signed note of the checkpoint for a tree of `size` leaves with root `root`.
    pub fn sign(&self, size: u64, root: Hash) -> Result<String, TlogError> {
        let body = Checkpoint::new(&self.origin, size, root, "")
            .map_err(|e| TlogError::Checkpoint(e.to_string()))?;
        let mut note =
            Note::new(&body.to_bytes(), &[]).map_err(|e| TlogError::Checkpoint(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| TlogError::Checkpoint(e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| TlogError::Checkpoint(e.to_string()))
    }
}

/// The verifier key of a private key in note encoding.
fn verifier_key_of(private_key: &str) -> Result<String, TlogError> {
    let bad = || TlogError::Key("the signing key is not PRIVATE+KEY+<name>+<id>+<base64>".into());
    let mut parts = private_key.splitn(5, '+');
    let (_, _, name, _, key) = (
        parts.next(),
        parts.next(),
        parts.next().ok_or_else(bad)?,
        parts.next(),
        parts.next().ok_or_else(bad)?,
    );
    let key = STANDARD.decode(key).map_err(|_| bad())?;
    let (&alg, seed) = key.split_first().ok_or_else(bad)?;
    if alg != ALG_ED25519 {
        return Err(TlogError::Key(
            "the signing key is not an Ed25519 key".into(),
        ));
    }
    let signing = ed25519_dalek::SigningKey::try_from(seed).map_err(|_| bad())?;
    Ok(signed_note::new_ed25519_verifier_key(
        name,
        &signing.verifying_key(),
    ))
}

/// A new key pair for the key `name` from 32 random bytes: (private key, verifier key), both in
/// note encoding.
pub fn generate_key(name: &str, seed: [u8; 32]) -> Result<(String, String), TlogError> {
    if !signed_note::is_key_name_valid(name) {
        return Err(TlogError::Key(format!(
            "the key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = [
        &[ALG_ED25519],
        signing.verifying_key().as_bytes().as_slice(),
    ]
    .concat();
    let private = [&[ALG_ED25519], seed.as_slice()].concat();
    let private_key = format!(
        "PRIVATE+KEY+{name}+{:08x}+{}",
        signed_note::key_id(name, &public),
        STANDARD.encode(private)
    );
    let verifier_key = signed_note::new_ed25519_verifier_key(name, &signing.verifying_key());
    Ok((private_key, verifier_key))
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The name and id of the key whose signature verified.
    pub key: String,
    /// The signed note as received.
    pub note: String,
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a signed checkpoint: {0}")]
    Malformed(String),
    #[error("signed only by unknown keys ({0}): not this log's key, nor an earlier one configured")]
    UnknownKey(String),
    #[error("the signature of key {0} does not verify: the checkpoint was altered or forged")]
    BadSignature(String),
    #[error("the checkpoint is for the log {found:?}, not {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

/// The verifier keys of a log: the current key's and every earlier one's.
pub struct CheckpointVerifier {
    origin: String,
    keys: VerifierList,
}

impl std::fmt::Debug for CheckpointVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointVerifier")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl CheckpointVerifier {
    /// Verifies checkpoints of the log `origin` signed by any of `verifier_keys` (note encoding).
    pub fn new(origin: &str, verifier_keys: &[String]) -> Result<Self, TlogError> {
        let mut list: Vec<Box<dyn Verifier>> = Vec::with_capacity(verifier_keys.len());
        for k in verifier_keys {
            let v = StandardVerifier::new(k.trim())
                .map_err(|e| TlogError::Key(format!("verifier key {:?}: {e}", k.trim())))?;
            list.push(Box::new(v));
        }
        if list.is_empty() {
            return Err(TlogError::Key("no verifier key".into()));
        }
        Ok(Self {
            origin: origin.to_owned(),
            keys: VerifierList::new(list),
        })
    }

    /// Opens a signed checkpoint: a signature by a known key must verify, and the body must be a
    /// checkpoint of this log.
    pub fn open(&self, note: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
        let malformed = |what: &str| CheckpointError::Malformed(what.to_owned());
        let text = std::str::from_utf8(note).map_err(|_| malformed("not UTF-8"))?;
        let parsed = Note::from_bytes(note).map_err(|e| malformed(&e.to_string()))?;
        let verified = match parsed.verify(&self.keys) {
            Ok((verified, _)) => verified,
            Err(NoteError::UnverifiedNote) => {
                return Err(CheckpointError::UnknownKey(signers(text).join(", ")));
            }
            Err(NoteError::InvalidSignature { name, id }) => {
                return Err(CheckpointError::BadSignature(format!("{name}+{id:08x}")));
            }
            Err(e) => return Err(malformed(&e.to_string())),
        };
        let body = Checkpoint::from_bytes(parsed.text()).map_err(|e| malformed(&e.to_string()))?;
        if body.origin() != self.origin {
            return Err(CheckpointError::WrongOrigin {
                expected: self.origin.clone(),
                found: body.origin().to_owned(),
            });
        }
        let key = verified
            .first()
            .map(|s| format!("{}+{:08x}", s.name(), s.id()))
            .unwrap_or_default();
        Ok(SignedCheckpoint {
            origin: body.origin().to_owned(),
            size: body.size(),
            root: *body.hash(),
            key,
            note: text.to_owned(),
        })
    }
}

/// `name+id` of every signature line of a note (for messages).
fn signers(note: &str) -> Vec<String> {
    let Some((_, sigs)) = note.rsplit_once("\n\n") else {
        return Vec::new();
    };
    sigs.lines()
        .filter_map(|l| Signature::from_bytes(l.as_bytes()).ok())
        .map(|s| format!("{}+{:08x}", s.name(), s.id()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "kubernaut.ai/datastorage/test";

    /// The checkpoint body of a tree (unsigned).
    fn body(origin: &str, size: u64, root: &Hash) -> String {
        format!("{origin}\n{size}\n{}\n", crate::hash_to_base64(root))
    }

    fn keys(seed: u8) -> (String, String) {
        generate_key("datastorage-test", [seed; 32]).unwrap()
    }

    #[test]
    fn a_checkpoint_is_the_c2sp_body_with_one_ed25519_signature_line() {
        let (private, public) = keys(1);
        let signer = CheckpointSigner::new(ORIGIN, &private).unwrap();
        assert_eq!(signer.verifier_key(), public);
        let root = Hash([7; 32]);
        let note = signer.sign(5, root).unwrap();
        let (text, sigs) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{text}\n"), body(ORIGIN, 5, &root));
        // "— <key name> <base64(key id ‖ signature)>\n": 4 + 64 bytes.
        let line = sigs.strip_suffix('\n').unwrap();
        let rest = line.strip_prefix("\u{2014} datastorage-test ").unwrap();
        assert_eq!(STANDARD.decode(rest).unwrap().len(), 68);
        let opened = CheckpointVerifier::new(ORIGIN, &[public])
            .unwrap()
            .open(note.as_bytes())
            .unwrap();
        assert_eq!((opened.size, opened.root), (5, root));
        assert!(opened.key.starts_with("datastorage-test+"));
    }

    #[test]
    fn earlier_keys_still_verify_and_unknown_keys_are_named() {
        let (old_private, old_public) = keys(1);
        let (new_private, new_public) = keys(2);
        let old = CheckpointSigner::new(ORIGIN, &old_private)
            .unwrap()
            .sign(3, Hash([1; 32]))
            .unwrap();
        let new = CheckpointSigner::new(ORIGIN, &new_private)
            .unwrap()
            .sign(9, Hash([2; 32]))
            .unwrap();
        let both = CheckpointVerifier::new(ORIGIN, &[new_public.clone(), old_public]).unwrap();
        assert_eq!(both.open(old.as_bytes()).unwrap().size, 3);
        assert_eq!(both.open(new.as_bytes()).unwrap().size, 9);
        let only_new = CheckpointVerifier::new(ORIGIN, &[new_public]).unwrap();
        match only_new.open(old.as_bytes()) {
            Err(CheckpointError::UnknownKey(who)) => assert!(who.starts_with("datastorage-test+")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_altered_body_or_another_log_is_refused() {
        let (private, public) = keys(3);
        let note = CheckpointSigner::new(ORIGIN, &private)
            .unwrap()
            .sign(4, Hash([3; 32]))
            .unwrap();
        let v = CheckpointVerifier::new(ORIGIN, std::slice::from_ref(&public)).unwrap();
        let altered = note.replacen("\n4\n", "\n5\n", 1);
        assert!(matches!(
            v.open(altered.as_bytes()),
            Err(CheckpointError::BadSignature(_))
        ));
        let other = CheckpointVerifier::new("another/log", &[public]).unwrap();
        assert!(matches!(
            other.open(note.as_bytes()),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        assert!(matches!(
            v.open(b"not a note"),
            Err(CheckpointError::Malformed(_))
        ));
    }

    #[test]
    fn keys_are_checked_when_read() {
        assert!(CheckpointSigner::new(ORIGIN, "PRIVATE+KEY+x+00000000+AQ==").is_err());
        assert!(CheckpointVerifier::new(ORIGIN, &["x+00000000+AQ==".into()]).is_err());
        assert!(generate_key("has space", [0; 32]).is_err());
        let (private, _) = keys(4);
        // The key id covers the name: a renamed key is refused.
        let renamed = private.replacen("datastorage-test", "other", 1);
        assert!(CheckpointSigner::new(ORIGIN, &renamed).is_err());
    }
}
