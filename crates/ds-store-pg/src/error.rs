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

impl From<PgStoreError> for StoreError {
    fn from(e: PgStoreError) -> Self {
        use diesel::result::Error;
        match e {
            PgStoreError::Connect(m) | PgStoreError::Pool(m) => StoreError::Unavailable(m),
            PgStoreError::Query(Error::BrokenTransactionManager) => {
                StoreError::Unavailable("connection lost during a transaction".into())
            }
            PgStoreError::Query(Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ClosedConnection,
                info,
            )) => StoreError::Unavailable(info.message().to_owned()),
            // statement_timeout: the database is too slow now; the client may retry (503).
            PgStoreError::Query(Error::DatabaseError(_, info))
                if info.message().contains("statement timeout") =>
            {
                StoreError::Unavailable(info.message().to_owned())
            }
            PgStoreError::Query(q) => StoreError::Query(q.to_string()),
            PgStoreError::Migration(m) => StoreError::Query(m),
            PgStoreError::Config(m) => StoreError::Unavailable(m),
            PgStoreError::Corrupt(m) => StoreError::Corrupt(m),
        }
    }
}
