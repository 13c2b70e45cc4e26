//! The paged reads of contract §10: the list (newest first) and the trail (oldest first), keyset
//! pagination on the indexes of `2026-12-05-000000_list_indexes`. Only the filters given are in the
//! statement (no `$1 IS NULL OR ...`, which would keep a generic plan off every index), and the
//! position is a row comparison, an index bound rather than a filter: a page deep in a scroll reads
//! what the first page reads.

use crate::error::PgStoreError;
use crate::rows::RecordRow;
use crate::schema::audit_records;
use diesel::dsl::sql;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ds_domain::query::{ListQuery, TrailQuery};

fn fetch(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

type RecordSql = diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<RecordRow, Pg>>;
type Statement = audit_records::BoxedQuery<'static, Pg, RecordSql>;

/// The statement of a page of the list: up to `limit + 1` records that pass the filters, after the
/// cursor's position, newest first.
fn list_statement(query: &ListQuery) -> Statement {
    let f = &query.filters;
    let mut q = audit_records::table
        .select(RecordRow::as_select())
        .into_boxed();
    if let Some(k) = f.kind {
        q = q.filter(audit_records::kind.eq(k.as_str()));
    }
    if let Some(n) = &f.namespace {
        q = q.filter(audit_records::namespace.eq(n.clone()));
    }
    if let Some(p) = f.phase {
        q = q.filter(audit_records::phase.eq(p.as_str()));
    }
    if let Some(c) = &f.correlation_id {
        q = q.filter(audit_records::correlation_id.eq(c.clone()));
    }
    if let Some(t) = f.since {
        q = q.filter(audit_records::received_at.ge(t.as_utc()));
    }
    if let Some(t) = f.until {
        q = q.filter(audit_records::received_at.lt(t.as_utc()));
    }
    if let Some(p) = query.after {
        q = q.filter(
            sql::<Bool>("(audit_records.received_at, audit_records.id) < (")
                .bind::<Timestamptz, _>(p.at.as_utc())
                .sql(", ")
                .bind::<BigInt, _>(p.id)
                .sql(")"),
        );
    }
    q.order((audit_records::received_at.desc(), audit_records::id.desc()))
        .limit(fetch(query.limit))
}

pub(crate) async fn list(
    conn: &mut AsyncPgConnection,
    query: &ListQuery,
) -> Result<Vec<RecordRow>, PgStoreError> {
    Ok(Unprepared::<_, RecordSql>::new("", list_statement(query))
        .load(conn)
        .await?)
}

/// PostgreSQL's plan of the very statement [`list`] runs for `query`, one line per row of
/// `EXPLAIN`; with `analyze`, run and timed (`EXPLAIN (ANALYZE, BUFFERS)`).
pub async fn explain_list(
    conn: &mut AsyncPgConnection,
    query: &ListQuery,
    analyze: bool,
) -> Result<Vec<String>, PgStoreError> {
    let prefix = if analyze {
        "EXPLAIN (ANALYZE, BUFFERS) "
    } else {
        "EXPLAIN "
    };
    Ok(Unprepared::<_, Text>::new(prefix, list_statement(query))
        .load::<String>(conn)
        .await?)
}

/// A statement that is planned each time it runs, with its parameters' values (never a prepared
/// statement, whose generic plan after five runs would not see how selective a filter's value is
/// and could leave the index for a sort); optionally behind a prefix (`EXPLAIN`). Planning costs
/// some 0.1 ms of the database's time per page.
struct Unprepared<Q, ST> {
    prefix: &'static str,
    statement: Q,
    sql_type: std::marker::PhantomData<ST>,
}

impl<Q, ST> Unprepared<Q, ST> {
    fn new(prefix: &'static str, statement: Q) -> Self {
        Unprepared {
            prefix,
            statement,
            sql_type: std::marker::PhantomData,
        }
    }
}

impl<Q, ST> QueryId for Unprepared<Q, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, ST> Query for Unprepared<Q, ST> {
    type SqlType = ST;
}

impl<Q: QueryFragment<Pg>, ST> QueryFragment<Pg> for Unprepared<Q, ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql(self.prefix);
        self.statement.walk_ast(out.reborrow())
    }
}

/// Up to `limit + 1` records of the trail after the cursor's position, oldest first.
pub(crate) async fn trail(
    conn: &mut AsyncPgConnection,
    query: &TrailQuery,
) -> Result<Vec<RecordRow>, PgStoreError> {
    let mut q = audit_records::table
        .select(RecordRow::as_select())
        .filter(audit_records::correlation_id.eq(query.correlation_id.clone()))
        .into_boxed();
    if let Some(p) = query.after {
        q = q.filter(
            sql::<Bool>("(audit_records.created_at, audit_records.id) > (")
                .bind::<Timestamptz, _>(p.at.as_utc())
                .sql(", ")
                .bind::<BigInt, _>(p.id)
                .sql(")"),
        );
    }
    Ok(
        q.order((audit_records::created_at.asc(), audit_records::id.asc()))
            .limit(fetch(query.limit))
            .load(conn)
            .await?,
    )
}
