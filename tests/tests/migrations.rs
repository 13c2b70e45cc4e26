//! Every migration's `down.sql` undoes its `up.sql`: on a database with records in it, each
//! migration in turn (newest first) is reverted with every later one, then all are applied again;
//! the schema (tables, columns, defaults, partitions, indexes, constraints, triggers, functions,
//! privileges) must be what it was, and the records still there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::{QueryableByName, RunQueryDsl};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;
use ds_domain::ports::AuditStore;
use ds_store_pg::{MIGRATIONS, PgStore, PoolSettings};
use ds_tests::{TestDb, writes};

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    text: String,
}

/// The schema of `public` as sorted lines (extension-owned objects left out: pgvector's functions).
/// Privileges show where they differ from the owner's defaults (a `REVOKE` of what was never granted
/// spells the defaults out). A partition's index is named by the partitioned index it belongs to: PostgreSQL names it itself,
/// and nothing refers to that name.
const SCHEMA_SQL: &str = "
SELECT coalesce(string_agg(line, E'\\n' ORDER BY line), '') AS text FROM (
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
         || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
    AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL
  SELECT 'relation ' || c.relname || ' ' || c.relkind::text
         || coalesce(' ' || pg_get_expr(c.relpartbound, c.oid), '')
         || CASE WHEN c.relacl IS NULL
                   OR c.relacl = acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\", c.relowner)
                 THEN '' ELSE ' acl ' || c.relacl::text END
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  UNION ALL
  SELECT 'index ' || coalesce((SELECT h.inhparent::regclass::text FROM pg_inherits h WHERE h.inhrelid = i.indexrelid), x.relname)
         || ' ' || regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON', 'CREATE \\1INDEX ON')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid
  WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
         || CASE WHEN p.proacl IS NULL OR p.proacl = acldefault('f'::\"char\", p.proowner)
                 THEN '' ELSE ' acl ' || p.proacl::text END
  FROM pg_proc p
  WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
) s(line)";

type Harness = AsyncConnectionWrapper<AsyncPgConnection>;

/// The schema, without diesel's own bookkeeping table (created by the first migration run, kept by
/// the last revert) and without extensions: the first migration creates `vector` only if it is
/// missing and its down leaves it, as it may serve other objects of the database.
fn schema(c: &mut Harness) -> String {
    diesel::sql_query(SCHEMA_SQL)
        .get_result::<Text>(c)
        .unwrap()
        .text
        .lines()
        .filter(|l| !l.contains("__diesel_schema_migrations") && !l.starts_with("extension "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn records(c: &mut Harness) -> String {
    diesel::sql_query(
        "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(id::text || content_digest::text, ',' ORDER BY id)), '') AS text FROM audit_records",
    )
    .get_result::<Text>(c)
    .unwrap()
    .text
}

/// The first line that differs between two schemas, for the failure message.
fn first_difference(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let only_a: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).take(5).collect();
    let only_b: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).take(5).collect();
    format!("before only: {only_a:#?}\nafter only: {only_b:#?}")
}

fn connect(url: &str) -> Harness {
    use diesel::Connection;
    Harness::establish(url).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_down_undoes_its_up_on_a_database_with_records() {
    let db = TestDb::empty().await.unwrap();
    let url = db.url.clone();
    // Up, one migration at a time: the schema after each.
    let (names, levels) = tokio::task::spawn_blocking(move || {
        let mut c = connect(&url);
        let names: Vec<String> = MigrationSource::<Pg>::migrations(&MIGRATIONS)
            .unwrap()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let mut levels = vec![schema(&mut c)];
        for _ in &names {
            c.run_next_migration(MIGRATIONS).unwrap();
            levels.push(schema(&mut c));
        }
        (names, levels)
    })
    .await
    .unwrap();
    assert!(names.len() >= 8, "{names:?}");
    assert!(
        levels[names.len()].lines().count() > 100
            && levels[names.len()].contains("audit_records_list_namespace"),
        "{}",
        levels[names.len()]
    );
    // Records written the service's way (group commit, digests, vectors, the log's queue).
    let store = PgStore::new(&db.url, &PoolSettings::default()).unwrap();
    for n in 0..4 {
        let batch = (n * 5..n * 5 + 5).map(writes::record).collect();
        store.write(writes::request(batch, 384)).await.unwrap();
    }
    store.close().await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = connect(&url);
        let n = names.len();
        let data = records(&mut c);
        assert!(data.starts_with("20 "), "{data}");
        // Redo: each migration reverted with every later one, then all applied again; the first
        // migration's down drops the records' table itself, so its redo is checked below.
        for k in (1..n).rev() {
            for _ in k..n {
                c.revert_last_migration(MIGRATIONS).unwrap();
            }
            let applied = c.run_pending_migrations(MIGRATIONS).unwrap();
            assert_eq!(applied.len(), n - k, "redo from {}", names[k]);
            let again = schema(&mut c);
            assert!(
                again == levels[n],
                "after reverting and re-applying from {}:\n{}",
                names[k],
                first_difference(&levels[n], &again)
            );
            assert_eq!(
                records(&mut c),
                data,
                "records after the redo of {}",
                names[k]
            );
        }
        // Down, one migration at a time: each leaves the schema its up found, records kept.
        for k in (0..n).rev() {
            c.revert_last_migration(MIGRATIONS).unwrap();
            let down = schema(&mut c);
            assert!(
                down == levels[k],
                "the down of {} does not leave what its up found:\n{}",
                names[k],
                first_difference(&levels[k], &down)
            );
            if k > 0 {
                assert_eq!(
                    records(&mut c),
                    data,
                    "records after the down of {}",
                    names[k]
                );
            }
        }
    })
    .await
    .unwrap();
}
