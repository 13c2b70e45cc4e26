//! The load generator: one HTTP/1.1 keep-alive connection per virtual user.

use crate::data;
use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// The service's API address.
    #[arg(long)]
    addr: SocketAddr,
    /// `write` (POST a record, kinds in turn), `batch` (POST 50-record batches) or `noop` (GET /healthz).
    #[arg(long, default_value = "write")]
    target: String,
    #[arg(long, default_value_t = 16)]
    conns: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests per second in all (open loop); absent: as fast as possible (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of records whose embedding text is one of the recurring alert texts (0..=1).
    #[arg(long, default_value_t = 1.0)]
    repeat_share: f64,
    /// Distinguishes the records of this run from every other run's.
    #[arg(long)]
    run: String,
    /// Stops early once this file exists (checked every 100 ms): a load that lasts as long as
    /// something else does (the bench's purge).
    #[arg(long)]
    stop_file: Option<std::path::PathBuf>,
}

struct User {
    histogram: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    records: u64,
    /// The first refusal's body, to tell what went wrong.
    first_error: Option<String>,
}

pub async fn run(args: LoadArgs) -> Result<Value> {
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let cpu_before = crate::search::own_cpu_seconds();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(path) = args.stop_file.clone() {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut users = Vec::new();
    for _ in 0..args.conns {
        let args = args.clone();
        let next = next.clone();
        let stop = stop.clone();
        users.push(tokio::spawn(async move {
            user(args, next, started, deadline, stop).await
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut transport_errors = 0;
    let mut records = 0;
    let mut first_error = None;
    for u in users {
        let u = u.await??;
        first_error = first_error.or(u.first_error);
        all.add(&u.histogram)?;
        for (s, n) in u.statuses {
            *statuses.entry(s).or_default() += n;
        }
        transport_errors += u.transport_errors;
        records += u.records;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok: u64 = statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let histogram: Vec<Value> = all
        .iter_log(100, 1.25)
        .filter(|v| v.count_since_last_iteration() > 0)
        .map(|v| {
            json!([
                v.value_iterated_to() as f64 / 1000.0,
                v.count_since_last_iteration()
            ])
        })
        .collect();
    Ok(json!({
        "target": args.target,
        "conns": args.conns,
        "rate": args.rate,
        "repeat_share": args.repeat_share,
        "seconds": elapsed,
        "requests": all.len(),
        "ok": ok,
        "records_per_second": records as f64 / elapsed,
        "requests_per_second": ok as f64 / elapsed,
        "statuses": statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "transport_errors": transport_errors,
        "first_error": first_error,
        "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": all.max() as f64 / 1000.0, "mean": all.mean() / 1000.0},
        "histogram_ms": histogram,
        "generator_cpu_seconds": crate::search::own_cpu_seconds() - cpu_before,
    }))
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn user(
    args: Arc<LoadArgs>,
    next: Arc<AtomicU64>,
    started: Instant,
    deadline: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<User> {
    let mut me = User {
        histogram: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        statuses: BTreeMap::new(),
        transport_errors: 0,
        records: 0,
        first_error: None,
    };
    let mut sender = connect(args.addr).await?;
    let host = args.addr.to_string();
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        // Open loop: request n is due at n / rate; latency counts from then.
        let due = match args.rate {
            Some(rate) => {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        // xorshift: a cheap per-user coin for the repeated-text share.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let hot = (rng_state % 10_000) as f64 / 10_000.0 < args.repeat_share;
        let (request, records) = build(&args, &host, n, hot)?;
        if sender.ready().await.is_err() {
            sender = connect(args.addr).await?;
        }
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await;
                if !(200..300).contains(&status)
                    && me.first_error.is_none()
                    && let Ok(b) = body
                {
                    me.first_error = Some(String::from_utf8_lossy(&b.to_bytes()).into_owned());
                }
                let micros = due.elapsed().as_micros().max(1) as u64;
                me.histogram.record(micros.min(120_000_000))?;
                *me.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    me.records += records;
                }
            }
            Err(_) => {
                me.transport_errors += 1;
                sender = connect(args.addr).await?;
            }
        }
    }
    Ok(me)
}

fn build(args: &LoadArgs, host: &str, n: u64, hot: bool) -> Result<(Request<Full<Bytes>>, u64)> {
    let builder = Request::builder().header("host", host);
    Ok(match args.target.as_str() {
        "noop" => (
            builder
                .method("GET")
                .uri("/healthz")
                .body(Full::new(Bytes::new()))?,
            0,
        ),
        "batch" => {
            let items: Vec<String> = (0..50u64)
                .map(|i| {
                    let kind = data::KINDS[((n * 50 + i) % 4) as usize];
                    format!(
                        r#"{{"kind":"{kind}","record":{}}}"#,
                        data::record(kind, &args.run, n * 50 + i, hot)
                    )
                })
                .collect();
            (
                builder
                    .method("POST")
                    .uri("/api/v1/audit/batch")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(
                        r#"{{"records":[{}]}}"#,
                        items.join(",")
                    ))))?,
                50,
            )
        }
        _ => {
            let kind = data::KINDS[(n % 4) as usize];
            (
                builder
                    .method("POST")
                    .uri(format!("/api/v1/audit/{kind}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(data::record(
                        kind, &args.run, n, hot,
                    ))))?,
                1,
            )
        }
    })
}
