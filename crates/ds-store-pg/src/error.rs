use ds_domain::ports::StoreError;

/// Errors of the PostgreSQL adapter. Converted to the port's [`StoreError`] at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    /// No connection could be established.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    /// The pool had no connection to give in time.
    #[error("no database connection available: {0}")]
    Pool(String),
    /// A query failed.
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database URL or its TLS settings are not usable.
    #[error("database connection settings: {0}")]
    Config(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl PgStoreError {
    /// An insert into `audit_records` found no partition for its `received_at` (PostgreSQL's
    /// check violation "no partition of relation ... found for row").
    pub fn is_missing_partition(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        matches!(self, PgStoreError::Query(Error::DatabaseError(DatabaseErrorKind::CheckViolation, info))
            if info.message().starts_with("no partition of relation"))
    }

    /// The database is unreachable or going away (see [`unavailable_reason`]): nothing was read or
    /// written, and the same statement may go elsewhere.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgStoreError::Connect(_) | PgStoreError::Pool(_) => true,
            PgStoreError::Query(q) => unavailable_reason(q).is_some(),
            _ => false,
        }
    }

    /// Serialization failures and deadlocks: the transaction may simply be run again.
    pub fn is_retryable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            PgStoreError::Query(Error::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _,
            )) => true,
            PgStoreError::Query(Error::DatabaseError(_, info)) => {
                info.message().contains("deadlock detected")
            }
            _ => false,
        }
    }
}

/// Errors that mean "the database is unreachable or going away": the request did not complete, nothing
/// of it was committed that the client was told about, and retrying (on this or another replica) is
/// safe. Each row: how it is recognised, and why. The one table of these; every other query error is a
/// 500.
///
/// PostgreSQL's SQLSTATE is not exposed through diesel's error information, so the server's messages
/// (English, as `lc_messages` is by default) stand in for codes that diesel does not classify.
const UNAVAILABLE_MESSAGES: &[(&str, &str)] = &[
    // 57P01 admin_shutdown: `pg_ctl stop/restart -m fast`, pg_terminate_backend.
    (
        "terminating connection due to administrator command",
        "57P01",
    ),
    // 57P02 crash_shutdown: another backend crashed, or `-m immediate`.
    (
        "terminating connection due to crash of another server process",
        "57P02",
    ),
    (
        "terminating connection because of crash of another server process",
        "57P02",
    ),
    // 57P03 cannot_connect_now: starting up, shutting down, in recovery.
    ("the database system is starting up", "57P03"),
    ("the database system is shutting down", "57P03"),
    ("the database system is in recovery mode", "57P03"),
    (
        "the database system is not yet accepting connections",
        "57P03",
    ),
    ("the database system is not accepting connections", "57P03"),
    // 57014 query_canceled by statement_timeout: the database is too slow now.
    ("canceling statement due to statement timeout", "57014"),
    // 25006 during a failover the old primary turns read-only (also classified by kind, below).
    ("cannot execute", "25006"),
    // 40001 / 40P01 are retried by the write path; when they surface, the client may retry too.
    ("could not serialize access", "40001"),
    ("deadlock detected", "40P01"),
];

/// Why `e` means the database is unavailable (the SQLSTATE or class it stands for), or `None`.
pub fn unavailable_reason(e: &diesel::result::Error) -> Option<&'static str> {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        // The connection broke in the middle of a transaction.
        Error::BrokenTransactionManager => Some("connection lost"),
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => Some("connection closed"),
        // No SQLSTATE: the statement could not be sent or its answer not read (I/O, closed socket).
        Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _) => {
            Some("connection closed")
        }
        Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => Some("25006"),
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => Some("40001"),
        Error::DatabaseError(_, info) => {
            let message = info.message();
            UNAVAILABLE_MESSAGES
                .iter()
                .find(|(m, code)| {
                    message.contains(m)
                        && (*code != "25006" || message.contains("read-only transaction"))
                })
                .map(|(_, code)| *code)
        }
        _ => None,
    }
}

impl From<PgStoreError> for StoreError {
    fn from(e: PgStoreError) -> Self {
        match e {
            PgStoreError::Connect(m) | PgStoreError::Pool(m) | PgStoreError::Config(m) => {
                StoreError::Unavailable(m)
            }
            PgStoreError::Query(q) => match unavailable_reason(&q) {
                Some(code) => StoreError::Unavailable(format!("{code}: {q}")),
                None => StoreError::Query(q.to_string()),
            },
            PgStoreError::Migration(m) => StoreError::Query(m),
            PgStoreError::Corrupt(m) => StoreError::Corrupt(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn db(kind: DatabaseErrorKind, message: &str) -> PgStoreError {
        PgStoreError::Query(Error::DatabaseError(kind, Box::new(message.to_owned())))
    }

    fn unavailable(e: PgStoreError) -> bool {
        matches!(StoreError::from(e), StoreError::Unavailable(_))
    }

    #[test]
    fn a_database_going_away_is_unavailable() {
        use DatabaseErrorKind::*;
        for e in [
            db(
                Unknown,
                "terminating connection due to administrator command",
            ),
            db(
                Unknown,
                "terminating connection due to crash of another server process",
            ),
            db(Unknown, "FATAL: the database system is shutting down"),
            db(Unknown, "the database system is starting up"),
            db(Unknown, "the database system is in recovery mode"),
            db(Unknown, "canceling statement due to statement timeout"),
            db(Unknown, "cannot execute INSERT in a read-only transaction"),
            db(
                ReadOnlyTransaction,
                "cannot execute UPDATE in a read-only transaction",
            ),
            db(
                ClosedConnection,
                "server closed the connection unexpectedly",
            ),
            db(UnableToSendCommand, "connection closed"),
            db(
                SerializationFailure,
                "could not serialize access due to concurrent update",
            ),
            db(Unknown, "deadlock detected"),
            PgStoreError::Query(Error::BrokenTransactionManager),
            PgStoreError::Connect("connection refused".into()),
            PgStoreError::Pool("timed out waiting for a connection".into()),
            PgStoreError::Config("sslmode verify-full needs sslrootcert".into()),
        ] {
            let shown = format!("{e:?}");
            assert!(unavailable(e), "{shown}");
        }
    }

    #[test]
    fn other_query_errors_stay_errors() {
        use DatabaseErrorKind::*;
        for e in [
            db(Unknown, "relation \"audit_records\" does not exist"),
            db(
                UniqueViolation,
                "duplicate key value violates unique constraint",
            ),
            db(CheckViolation, "new row violates check constraint"),
            db(Unknown, "cannot execute this with a shrug"),
            PgStoreError::Query(Error::NotFound),
            PgStoreError::Migration("bad migration".into()),
        ] {
            let shown = format!("{e:?}");
            assert!(!unavailable(e), "{shown}");
        }
    }
}
