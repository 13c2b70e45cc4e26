//! The transparency log's measurements: inclusion proofs through the API, the export, and an
//! export of any size for `datastorage verify` to check (built here with the same leaf and tree code,
//! signed with a key of this run).

use crate::data;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ProofArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    db_url: String,
    /// Timed proofs (sequential, one keep-alive connection).
    #[arg(long, default_value_t = 2000)]
    proofs: usize,
}

#[derive(QueryableByName)]
struct Sample {
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Inclusion proofs of random logged records against the latest checkpoint: latency and answers.
pub async fn proofs(args: ProofArgs) -> Result<Value> {
    let mut conn = AsyncPgConnection::establish(&args.db_url).await?;
    let samples: Vec<Sample> = diesel::sql_query(format!(
        "SELECT r.kind, r.id FROM tlog_leaves l JOIN audit_records r ON r.id = l.record_id \
         WHERE l.log_index < (SELECT max(tree_size) FROM tlog_checkpoints) \
         AND l.log_index IN (SELECT (random() * (SELECT max(tree_size) - 1 FROM tlog_checkpoints))::bigint \
                             FROM generate_series(1, {}))",
        args.proofs * 2
    ))
    .load(&mut conn)
    .await?;
    if samples.is_empty() {
        bail!("no logged record to prove");
    }
    let stream = tokio::net::TcpStream::connect(args.addr).await?;
    let (mut sender, c) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(c);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut ok = 0usize;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for s in samples.iter().cycle().take(args.proofs) {
        let request = hyper::Request::builder()
            .uri(format!(
                "/api/v1/log/proof/inclusion?kind={}&id={}",
                s.kind, s.id
            ))
            .header("host", args.addr.to_string())
            .body(Empty::<Bytes>::new())?;
        sender.ready().await?;
        let t = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await?;
        hist.record(t.elapsed().as_micros() as u64)?;
        *statuses.entry(status).or_default() += 1;
        ok += usize::from(status == 200);
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "proofs": args.proofs,
        "ok": ok,
        "statuses": statuses,
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0},
    }))
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[arg(long)]
    addr: SocketAddr,
    /// Where to write the export.
    #[arg(long)]
    out: PathBuf,
}

/// The whole export through the API, into a file: lines and lines per second.
pub async fn export(args: ExportArgs) -> Result<Value> {
    let stream = tokio::net::TcpStream::connect(args.addr).await?;
    let (mut sender, c) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(c);
    let request = hyper::Request::builder()
        .uri("/api/v1/audit/export")
        .header("host", args.addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let t = Instant::now();
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        bail!("export answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    let mut lines = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
            file.write_all(&data)?;
        }
    }
    file.flush()?;
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({"lines": lines, "seconds": secs, "lines_per_second": lines as f64 / secs}))
}

#[derive(clap::Args)]
pub struct SyntheticArgs {
    /// Leaves of the export.
    #[arg(long)]
    leaves: u64,
    /// A directory for `export.ndjson`, `checkpoint.txt` and `verifier-key.txt`.
    #[arg(long)]
    dir: PathBuf,
}

/// An export of `leaves` records (the bench's records, as the service would export them) and a
/// checkpoint of it, signed with a key made for this run.
pub fn synthetic(args: SyntheticArgs) -> Result<Value> {
    use ds_tlog::tree::CompactRange;
    use ds_tlog::verify::ExportLine;
    std::fs::create_dir_all(&args.dir)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(args.dir.join("export.ndjson"))?);
    let mut range = CompactRange::default();
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")?.timestamp_micros();
    for n in 0..args.leaves {
        let kind = data::KINDS[(n % 4) as usize];
        let record: serde_json::Map<String, Value> =
            serde_json::from_str(&data::record(kind, "verify", n, n % 3 != 0))?;
        let received_at = chrono::DateTime::from_timestamp_micros(base + n as i64 * 100)
            .context("a timestamp")?
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let id = n as i64 + 1;
        let leaf = ds_tlog::Leaf {
            kind,
            id,
            received_at: &received_at,
            record: &record,
        }
        .hash();
        range.push(leaf);
        let line = ExportLine {
            log_index: n,
            leaf_hash: ds_tlog::hash_to_base64(&leaf),
            kind: kind.to_owned(),
            id,
            received_at: Some(received_at),
            record: Some(record),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let (private, public) = ds_tlog::note::generate_key("kubernaut.ai/datastorage", seed)?;
    let note = ds_tlog::note::CheckpointSigner::new("kubernaut.ai/datastorage", &private)?
        .sign(args.leaves, range.root())?;
    std::fs::write(args.dir.join("checkpoint.txt"), note)?;
    std::fs::write(args.dir.join("verifier-key.txt"), format!("{public}\n"))?;
    let bytes = std::fs::metadata(args.dir.join("export.ndjson"))?.len();
    Ok(json!({"leaves": args.leaves, "bytes": bytes}))
}

/// Takes the sequencer's advisory lock on a connection of its own, says `held`, and keeps it until
/// stdin closes (the process ends, the connection with it, and the lock is free again).
pub async fn hold_sequencer(db_url: &str) -> Result<()> {
    use diesel_async::SimpleAsyncConnection;
    use std::io::Read;
    let mut conn = AsyncPgConnection::establish(db_url).await?;
    conn.batch_execute(&format!(
        "SELECT pg_advisory_lock({})",
        ds_store_pg::SEQUENCER_LOCK
    ))
    .await?;
    let mut out = std::io::stdout();
    writeln!(out, "held")?;
    out.flush()?;
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    drop(conn);
    Ok(())
}
