//! Search latency through the API and recall@10 against an exact scan.

use crate::data::{Vectors, vector_literal};
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
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Queries whose exact answer is computed (each is a full scan).
    #[arg(long, default_value_t = 20)]
    exact: usize,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

pub async fn run(args: SearchArgs) -> Result<Value> {
    let mut vectors = Vectors::new(0xbeef);
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| vectors.next_vector()).collect();
    let mut client = Client::new(args.addr);
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

    // Exact: the same query as the service's, with index scans off (a sequential scan + top-N sort).
    let mut conn = AsyncPgConnection::establish(&args.db_url).await?;
    conn.batch_execute("SET enable_indexscan = off; SET max_parallel_workers_per_gather = 2")
        .await?;
    let mut recalls = Vec::new();
    for (q, got) in queries.iter().zip(&answers).take(args.exact) {
        let sql = format!(
            "SELECT r.id FROM embeddings e JOIN audit_records r ON r.embedding_id = e.id \
             WHERE e.model = '{}' ORDER BY e.embedding <=> '{}' LIMIT 10",
            args.model.replace('\'', "''"),
            vector_literal(q)
        );
        let exact: HashSet<i64> = diesel::sql_query(sql)
            .load::<Id>(&mut conn)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        if exact.is_empty() {
            bail!("the exact scan found nothing: is the table filled?");
        }
        let hit = got.iter().filter(|id| exact.contains(id)).count();
        recalls.push(hit as f64 / exact.len() as f64);
    }
    let recall = recalls.iter().sum::<f64>() / recalls.len().max(1) as f64;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "queries": args.queries,
        "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": latency.max() as f64 / 1000.0},
        "recall_at_10": recall,
        "recall_queries": recalls.len(),
        "min_recall": recalls.iter().cloned().fold(1.0, f64::min),
    }))
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

/// A tiny HTTP client for the search endpoint (one keep-alive connection).
struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Client { addr, sender: None }
    }

    async fn search(&mut self, vector: &[f32]) -> Result<Vec<i64>> {
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
        let body = json!({"vector": vector, "limit": 10}).to_string();
        let request = hyper::Request::builder()
            .method("POST")
            .uri("/api/v1/audit/search")
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "search answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        self.sender = Some(sender);
        let v: Value = serde_json::from_slice(&bytes)?;
        v["results"]
            .as_array()
            .context("no results array")?
            .iter()
            .map(|r| r["id"].as_i64().context("a result without id"))
            .collect()
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
