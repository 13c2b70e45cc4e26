//! The list of records (contract §10) through the API: page-1 latency of each single filter and of
//! namespace + kind + time range, each next to PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)` of the very
//! statement the service runs for it (`ds_store_pg::explain_list`), in the same run; and a deep
//! scroll, page 1 against page 1,000.

use crate::search::Client;
use anyhow::{Context, Result, bail};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ds_domain::query::{ListQuery, parse_list};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    addr: SocketAddr,
    /// The database, for the filter values and the plans.
    #[arg(long)]
    db_url: String,
    /// Timed requests per query.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Records per page.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Pages of the deep scroll (fewer when the table has fewer records).
    #[arg(long, default_value_t = 1000)]
    pages: usize,
}

#[derive(QueryableByName)]
struct Sample {
    #[diesel(sql_type = diesel::sql_types::Text)]
    namespace: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    correlation_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    since: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    until: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    records: i64,
}

/// The filter values: a namespace, a correlation id and a tenth of the prefilled records' time
/// window, taken from the data (the prefill gives each a known share: docs/performance.md).
async fn sample(c: &mut AsyncPgConnection) -> Result<Sample> {
    Ok(diesel::sql_query(
        "WITH w AS (SELECT min(received_at) AS lo, max(received_at) AS hi FROM audit_records \
                    WHERE name LIKE 'prefill-%') \
         SELECT (SELECT namespace FROM audit_records WHERE id = 1000) AS namespace, \
                (SELECT correlation_id FROM audit_records WHERE id = 1000) AS correlation_id, \
                to_char((lo + (hi - lo) * 0.45) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS since, \
                to_char((lo + (hi - lo) * 0.55) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS until, \
                (SELECT count(*) FROM audit_records) AS records \
         FROM w",
    )
    .get_result(c)
    .await?)
}

/// The parsed query of a query string (the domain's own parser: the bench asks what clients ask).
fn query(qs: &str) -> Result<ListQuery> {
    let pairs: Vec<(String, String)> = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    parse_list(&pairs).map_err(|e| anyhow::anyhow!("{qs}: {e}"))
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the statement of `q`: the plan, its execution time (ms) and the
/// buffers it touched.
async fn analyze(c: &mut AsyncPgConnection, q: &ListQuery) -> Result<Value> {
    let plan = ds_store_pg::explain_list(c, q, true).await?;
    let execution_ms = plan
        .iter()
        .find_map(|l| l.trim().strip_prefix("Execution Time: "))
        .and_then(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
        .context("EXPLAIN ANALYZE without an execution time")?;
    // The top node's buffers: everything the statement touched.
    let buffers: u64 = plan
        .iter()
        .find(|l| l.trim().starts_with("Buffers:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('=').and_then(|(_, n)| n.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0);
    // A sequential scan of a partition that holds something (one of an empty month ahead reads no
    // buffer and costs nothing).
    let seq_scan = plan.iter().enumerate().any(|(n, l)| {
        l.contains("Seq Scan on audit_records")
            && plan[n + 1..]
                .iter()
                .take_while(|l| !l.contains("->") && !l.starts_with("Planning"))
                .any(|l| l.contains("Buffers:"))
    });
    Ok(json!({
        "execution_ms": execution_ms,
        "buffers": buffers,
        "seq_scan": seq_scan,
        "plan": plan,
    }))
}

async fn page(client: &mut Client, qs: &str) -> Result<(f64, Value)> {
    let path = format!("/api/v1/audit/records?{qs}");
    let t = Instant::now();
    let (status, bytes) = client.send("GET", &path, None).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok((ms, serde_json::from_slice(&bytes)?))
}

pub async fn run(args: ListArgs) -> Result<Value> {
    let mut db = AsyncPgConnection::establish(&args.db_url).await?;
    let s = sample(&mut db).await?;
    let limit = args.limit;
    let cases = [
        ("no filter", format!("limit={limit}")),
        ("kind", format!("kind=workflow&limit={limit}")),
        (
            "namespace",
            format!("namespace={}&limit={limit}", s.namespace),
        ),
        ("phase", format!("phase=Failed&limit={limit}")),
        (
            "correlationId",
            format!("correlationId={}&limit={limit}", s.correlation_id),
        ),
        (
            "time range",
            format!("since={}&until={}&limit={limit}", s.since, s.until),
        ),
        (
            "namespace+kind+time range",
            format!(
                "namespace={}&kind=execution&since={}&until={}&limit={limit}",
                s.namespace, s.since, s.until
            ),
        ),
    ];
    let mut client = Client::new(args.addr);
    let mut out = Vec::new();
    for (name, qs) in &cases {
        for _ in 0..20 {
            page(&mut client, qs).await?;
        }
        let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
        let mut returned = 0;
        for _ in 0..args.requests {
            let (ms, body) = page(&mut client, qs).await?;
            returned = body["records"].as_array().map_or(0, Vec::len);
            latency.record((ms * 1000.0).max(1.0) as u64)?;
        }
        let plan = analyze(&mut db, &query(qs)?).await?;
        let q = |p: f64| latency.value_at_quantile(p) as f64 / 1000.0;
        out.push(json!({
            "query": name,
            "query_string": qs,
            "records_per_page": returned,
            "latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": latency.max() as f64 / 1000.0},
            "explain_analyze": plan,
        }));
    }

    // The deep scroll: every page after the previous one's cursor, no filter.
    let pages = args
        .pages
        .min(usize::try_from(s.records).unwrap_or(0) / limit.max(1))
        .max(2);
    let mut times = Vec::with_capacity(pages);
    let mut cursor: Option<String> = None;
    let mut first_query = None;
    let mut last_query = None;
    for n in 0..pages {
        let qs = match &cursor {
            None => format!("limit={limit}"),
            Some(c) => format!("limit={limit}&cursor={c}"),
        };
        let (ms, body) = page(&mut client, &qs).await?;
        times.push(ms);
        if n == 0 {
            first_query = Some(qs.clone());
        }
        last_query = Some(qs);
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let ten = times.len().min(10);
    let (head, tail) = (&times[..ten], &times[times.len() - ten..]);
    // The same two pages again, timed by PostgreSQL.
    let first_plan = analyze(&mut db, &query(first_query.as_deref().unwrap_or(""))?).await?;
    let last_plan = analyze(&mut db, &query(last_query.as_deref().unwrap_or(""))?).await?;
    Ok(json!({
        "records": s.records,
        "queries": out,
        "deep_scroll": {
            "pages": times.len(),
            "first_10_pages_mean_ms": mean(head),
            "last_10_pages_mean_ms": mean(tail),
            "last_over_first": mean(tail) / mean(head).max(1e-9),
            "first_page_explain_analyze": first_plan,
            "last_page_explain_analyze": last_plan,
        },
    }))
}
