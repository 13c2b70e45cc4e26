//! `bodies`: N concurrent requests, each with a body of B bytes (a valid record padded with
//! whitespace), all sent at once; the answers' statuses. xtask reads the service's peak RSS around it.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct BodiesArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value_t = 200)]
    conns: usize,
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    bytes: usize,
}

fn body(n: usize, bytes: usize) -> Vec<u8> {
    let record = json!({
        "name": format!("rr-bodies-{n}"), "namespace": "bench", "phase": "Processing",
        "createdAt": "2025-10-06T10:00:46.123456Z", "correlationId": "rr-2025-10-06-bodies",
        "signalType": "prometheus", "signalName": "KubePodOOMKilled", "signalNamespace": "monitoring",
        "targetType": "deployment", "targetName": "checkout-api", "targetNamespace": "bench"
    });
    let mut b = serde_json::to_vec(&record).unwrap_or_default();
    b.resize(bytes.max(b.len()), b' ');
    b
}

async fn one(addr: SocketAddr, body: Arc<Vec<u8>>, go: Arc<tokio::sync::Barrier>) -> Result<u16> {
    let mut conn = TcpStream::connect(addr).await.context("connecting")?;
    let head = format!(
        "POST /api/v1/audit/remediation HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    go.wait().await;
    conn.write_all(head.as_bytes()).await?;
    // A refused request is answered before its body is read; the write may then fail.
    let _ = conn.write_all(&body).await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

pub async fn run(args: BodiesArgs) -> Result<Value> {
    let go = Arc::new(tokio::sync::Barrier::new(args.conns));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.conns)
        .map(|n| {
            let body = Arc::new(body(n, args.bytes));
            tokio::spawn(one(args.addr, body, go.clone()))
        })
        .collect();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let status = t.await??;
        *statuses.entry(status.to_string()).or_default() += 1;
    }
    Ok(json!({
        "requests": args.conns,
        "body_bytes": args.bytes,
        "statuses": statuses,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
