//! HTTP/1.1 spoken by hand over TCP: request targets exactly as written (percent-encoded, doubled
//! slashes, dot segments, absolute-form), which an HTTP client library would normalise, and bodies
//! sent in parts.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: status and body text.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawReply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends the head of a request (`Connection: close`, `Content-Length` of `declared` bytes) and returns
/// the connection, for the caller to send the body (or part of it) and then [`finish`].
pub async fn start(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    declared: usize,
) -> Result<TcpStream> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {declared}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = TcpStream::connect(addr).await.context("connecting")?;
    conn.write_all(head.as_bytes()).await?;
    Ok(conn)
}

/// Reads the whole answer of a request started with [`start`].
pub async fn finish(mut conn: TcpStream) -> Result<RawReply> {
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    Ok(RawReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// One whole request.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<RawReply> {
    let mut conn = start(addr, method, target, headers, body.len()).await?;
    conn.write_all(body).await?;
    finish(conn).await
}
