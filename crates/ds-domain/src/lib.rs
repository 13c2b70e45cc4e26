//! The domain of the datastorage service: the four audit record kinds as validated types, the rules of
//! contract §2, sanitization (§2.7), the embedding text of each kind (§5), the ports that adapters
//! implement, and the write/read use-cases.
//!
//! Architecture invariant: this crate depends on no web framework, database driver or network client
//! (`cargo xtask ci` checks it with `cargo tree -i`). Everything that talks to the outside world does so
//! through the traits in [`ports`].

pub mod digest;
pub mod embedding_text;
pub mod error;
pub mod jobs;
pub mod kind;
pub mod lenient;
pub mod log;
pub mod ports;
pub mod query;
pub mod record;
pub mod retention;
pub mod sanitize;
pub mod search;
pub mod service;
pub mod time;
pub mod validate;

pub use error::{AuditError, Violation};
pub use kind::{Kind, Phase};
pub use record::{ValidRecord, parse_record};
pub use service::AuditService;
pub use time::Timestamp;
