//! HTTP/1.1 spoken by hand over TCP: request targets exactly as written (percent-encoded, doubled
//! slashes, dot segments, absolute-form), which an HTTP client library would normalise, and bodies
//! sent in parts.

use anyhow::{Context, Result, bail};
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

/// Reads the answer of a request started with [`start`].
pub async fn finish(conn: TcpStream) -> Result<RawReply> {
    read_answer(conn, false).await
}

/// Reads one answer: the head, then `Content-Length` bytes of body (none after a `HEAD`). Does not
/// wait for the server to close: a server that answered before reading a body may take a while to.
async fn read_answer(mut conn: TcpStream, head_request: bool) -> Result<RawReply> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body_start) = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&raw[..i]).into_owned(), i + 4);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "the connection closed before the answer's head: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    let mut reply = RawReply {
        status,
        head,
        body: String::new(),
    };
    let length = if head_request {
        Some(0)
    } else {
        reply
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
    };
    let mut body = raw[body_start..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            conn.read_to_end(&mut body).await?;
        }
    }
    reply.body = String::from_utf8_lossy(&body).into_owned();
    Ok(reply)
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
    // A server may answer (and stop reading) before the body: that is not an error here.
    let _ = conn.write_all(body).await;
    read_answer(conn, method == "HEAD").await
}
