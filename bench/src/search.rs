//! Search latency through the API and recall@10 against an exact scan.

use crate::data::{Shape, Vectors, exact_vector_literal};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(clap::Args)]
pub struct SearchArgs {
    #[arg(long)]
    addr: SocketAddr,
    /// The database, for the exact answers.
    #[arg(long)]
    db_url: String,
    /// The model id the vectors are stored under.
    #[arg(long)]
    model: String,
    /// Timed searches: 1,000, so that p99 is the 10th worst, not the 2nd (the first search on each of
    /// the pool's connections pays for loading pgvector and the catalog: ~20 ms more).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Queries whose exact answer is computed (each is a full scan).
    #[arg(long, default_value_t = 50)]
    exact: usize,
    /// Where the exact answers are kept: read when the file exists (the same queries against the same
    /// table: a sweep over `hnsw.ef_search` scans once), written otherwise.
    #[arg(long)]
    exact_file: Option<std::path::PathBuf>,
    /// The shape of the query vectors: that of the pre-filled ones.
    #[arg(long, value_enum, default_value_t = Shape::Embedding)]
    vectors: Shape,
}

#[derive(QueryableByName, serde::Serialize, serde::Deserialize)]
struct Exact {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    distance: f64,
}

/// Exact top-10 (id and cosine distance) of each query: index scans off (a sequential scan + top-N
/// sort), the service's join and model filter.
async fn exact_answers(args: &SearchArgs, queries: &[Vec<f32>]) -> Result<Vec<Vec<Exact>>> {
    if let Some(path) = &args.exact_file
        && let Ok(bytes) = std::fs::read(path)
    {
        return Ok(serde_json::from_slice(&bytes)?);
    }
    let mut conn = AsyncPgConnection::establish(&args.db_url).await?;
    conn.batch_execute("SET enable_indexscan = off; SET max_parallel_workers_per_gather = 2")
        .await?;
    let mut all = Vec::new();
    for q in queries.iter().take(args.exact) {
        let sql = format!(
            "SELECT r.id, (e.embedding <=> '{v}') AS distance \
             FROM embeddings e JOIN audit_records r ON r.embedding_id = e.id \
             WHERE e.model = '{}' ORDER BY e.embedding <=> '{v}', r.id LIMIT 10",
            args.model.replace('\'', "''"),
            v = exact_vector_literal(q)
        );
        let exact: Vec<Exact> = diesel::sql_query(sql).load(&mut conn).await?;
        if exact.is_empty() {
            bail!("the exact scan found nothing: is the table filled?");
        }
        all.push(exact);
    }
    if let Some(path) = &args.exact_file {
        std::fs::write(path, serde_json::to_vec(&all)?)?;
    }
    Ok(all)
}

/// How similar the returned records are to the query against the exact ten: the mean cosine
/// similarity of the answer over that of the exact answer (1.0: as similar; recall may still be lower
/// when many records are about as near as the tenth).
fn similarity_ratio(got: &[(i64, f64)], exact: &[Exact]) -> f64 {
    if got.is_empty() || exact.is_empty() {
        return 0.0;
    }
    let got_sum: f64 = got.iter().map(|(_, d)| 1.0 - d).sum();
    let exact_sum: f64 = exact.iter().map(|e| 1.0 - e.distance).sum();
    // A missing result counts as similarity 0.
    (got_sum / got.len().max(exact.len()) as f64) / (exact_sum / exact.len() as f64)
}

/// recall@10 of one answer: a returned record counts when it is one of the exact ten, or as near to
/// the query as the tenth (records sharing one vector tie; any of them is a right answer).
fn recall(got: &[(i64, f64)], exact: &[Exact]) -> f64 {
    let ids: HashSet<i64> = exact.iter().map(|e| e.id).collect();
    let tenth = exact.last().map_or(0.0, |e| e.distance);
    let hits = got
        .iter()
        .filter(|(id, distance)| ids.contains(id) || *distance <= tenth + 1e-6)
        .count()
        .min(exact.len());
    hits as f64 / exact.len() as f64
}

pub async fn run(args: SearchArgs) -> Result<Value> {
    let mut vectors = Vectors::new(args.vectors, 0xbeef);
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| vectors.next_vector()).collect();
    let mut client = SearchClient::new(args.addr);
    // Warm-up: the first queries load the index into memory.
    for q in queries.iter().take(20) {
        client.search(q).await?;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut answers = Vec::new();
    for q in &queries {
        let t = Instant::now();
        let ids = client.search(q).await?;
        latency.record(t.elapsed().as_micros().max(1) as u64)?;
        answers.push(ids);
    }

    let exact = exact_answers(&args, &queries).await?;
    let recalls: Vec<f64> = answers
        .iter()
        .zip(&exact)
        .map(|(got, exact)| recall(got, exact))
        .collect();
    let recall = recalls.iter().sum::<f64>() / recalls.len().max(1) as f64;
    let quality: Vec<f64> = answers
        .iter()
        .zip(&exact)
        .map(|(got, exact)| similarity_ratio(got, exact))
        .collect();
    let (found, probed) = self_found(&args, &mut client).await?;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "self_found": found as f64 / probed.max(1) as f64,
        "self_probes": probed,
        "queries": args.queries,
        "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": latency.max() as f64 / 1000.0},
        "recall_at_10": recall,
        "similarity_ratio": quality.iter().sum::<f64>() / quality.len().max(1) as f64,
        "min_similarity_ratio": quality.iter().cloned().fold(1.0, f64::min),
        "recall_queries": recalls.len(),
        "min_recall": recalls.iter().cloned().fold(1.0, f64::min),
        "recalls": recalls,
    }))
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    embedding: String,
}

/// Reachability of the index: of 200 stored vectors spread over the table, how many a search for
/// that very vector returns (its record, or one tied at distance 0). A miss is a record the graph
/// search cannot reach from its entry point at this `ef_search`, whatever the query: it bounds
/// recall, and a larger `ef_search` only partly repairs it.
async fn self_found(args: &SearchArgs, client: &mut SearchClient) -> Result<(usize, usize)> {
    let mut conn = AsyncPgConnection::establish(&args.db_url).await?;
    let stored: Vec<Stored> = diesel::sql_query(
        "SELECT r.id, e.embedding::text AS embedding FROM embeddings e \
         JOIN audit_records r ON r.embedding_id = e.id \
         WHERE e.model = $1 AND e.id % (SELECT greatest(1, max(id) / 200) FROM embeddings) = 0 \
         ORDER BY e.id LIMIT 200",
    )
    .bind::<diesel::sql_types::Text, _>(&args.model)
    .load(&mut conn)
    .await?;
    let mut found = 0;
    for s in &stored {
        let vector = s
            .embedding
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(str::parse::<f32>)
            .collect::<Result<Vec<_>, _>>()?;
        let got = client.search(&vector).await?;
        if got.iter().any(|&(id, d)| id == s.id || d <= 1e-6) {
            found += 1;
        }
    }
    Ok((found, stored.len()))
}

/// Polls `/readyz` (with back-off, at most a minute) until the service is ready; its model id.
pub async fn ready(addr: SocketAddr) -> Result<Value> {
    let started = Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        if let Ok(v) = get_json(addr, "/readyz").await
            && v["status"] == "ready"
        {
            return Ok(v["dependencies"]["embedding"]["model"].clone());
        }
        if started.elapsed().as_secs() > 60 {
            bail!("the service at {addr} did not become ready within a minute");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

async fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

/// The search endpoint through a [`Client`].
struct SearchClient(Client);

impl SearchClient {
    fn new(addr: SocketAddr) -> Self {
        SearchClient(Client::new(addr))
    }

    /// The ids and cosine distances of the top 10.
    async fn search(&mut self, vector: &[f32]) -> Result<Vec<(i64, f64)>> {
        let body = json!({"vector": vector, "limit": 10}).to_string();
        let (status, bytes) = self
            .0
            .send("POST", "/api/v1/audit/search", Some(body))
            .await?;
        if !status.is_success() {
            bail!(
                "search answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let v: Value = serde_json::from_slice(&bytes)?;
        v["results"]
            .as_array()
            .context("no results array")?
            .iter()
            .map(|r| {
                let id = r["id"].as_i64().context("a result without id")?;
                let similarity = r["similarity"]
                    .as_f64()
                    .context("a result without similarity")?;
                Ok((id, 1.0 - similarity))
            })
            .collect()
    }
}

/// A tiny HTTP/1.1 client (one keep-alive connection, reopened when the server closed it).
pub struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr, sender: None }
    }

    /// One request; the status and the whole body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(hyper::StatusCode, Bytes)> {
        let reusable = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        let mut sender = match self.sender.take() {
            Some(s) if reusable => s,
            _ => {
                let stream = tokio::net::TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                sender
            }
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        self.sender = Some(sender);
        Ok((status, bytes))
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU seconds of a process from /proc (0 when unreadable).
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(rows: &[(i64, f64)]) -> Vec<Exact> {
        rows.iter()
            .map(|&(id, distance)| Exact { id, distance })
            .collect()
    }

    #[test]
    fn recall_counts_the_exact_records_and_ties_with_the_tenth_only() {
        let truth = exact(&[(1, 0.1), (2, 0.2), (3, 0.3)]);
        assert_eq!(recall(&[(1, 0.1), (2, 0.2), (3, 0.3)], &truth), 1.0);
        // Record 9 shares record 3's vector: as right an answer as 3.
        assert_eq!(recall(&[(1, 0.1), (2, 0.2), (9, 0.3)], &truth), 1.0);
        // Record 8 is farther than the third exact answer: a miss.
        let r = recall(&[(1, 0.1), (2, 0.2), (8, 0.31)], &truth);
        assert!((r - 2.0 / 3.0).abs() < 1e-9, "{r}");
        assert_eq!(recall(&[], &truth), 0.0);
    }

    #[test]
    fn similarity_ratio_compares_mean_similarities_and_counts_missing_results() {
        let truth = exact(&[(1, 0.2), (2, 0.4)]); // similarities 0.8 and 0.6: mean 0.7
        assert!((similarity_ratio(&[(1, 0.2), (2, 0.4)], &truth) - 1.0).abs() < 1e-9);
        let r = similarity_ratio(&[(1, 0.2), (5, 0.5)], &truth); // (0.8 + 0.5) / 2 / 0.7
        assert!((r - 0.65 / 0.7).abs() < 1e-9, "{r}");
        let r = similarity_ratio(&[(1, 0.2)], &truth); // a missing result counts as 0
        assert!((r - 0.4 / 0.7).abs() < 1e-9, "{r}");
        assert_eq!(similarity_ratio(&[], &truth), 0.0);
    }
}
