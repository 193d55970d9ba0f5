//! The one small HTTP/1.1 responder of the agent's plain endpoints (the
//! status server, the `healthCheckNodePort` servers) and of weir-dev's fake
//! API server: read a request head (with a size limit), write a response
//! head and body. No routing, no keep-alive policy: the callers decide.
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Reads up to the end of one request head (its blank line) into `buf`
/// and returns the head without its blank line; whatever followed stays
/// in `buf` (a body, the next request). `None`: the peer closed before
/// sending anything. A head longer than `max` is an error.
pub async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<String>> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > max {
            return Err(std::io::Error::other("request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    Ok(Some(head))
}

/// One request's head on a connection that answers once and closes:
/// `read_head` within `timeout`, any failure (timeout, error, too large,
/// closed) as `None`.
pub async fn read_one_head<R: AsyncRead + Unpin>(rd: &mut R, max: usize, timeout: Duration) -> Option<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(timeout, read_head(rd, &mut buf, max)).await.ok()?.ok()?
}

/// The request target (path and query) of a request head.
pub fn target(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("/")
}

/// A response head: the status line (`status` as "200 OK"), Content-Type,
/// `headers`, Content-Length when `body_len` is given, and
/// `Connection: close` when `close`.
pub fn head(
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body_len: Option<usize>,
    close: bool,
) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(len) = body_len {
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out
}

/// Writes a whole response (head with Content-Length, then `body`) and
/// flushes it.
pub async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    wr.write_all(head(status, content_type, headers, Some(body.len()), close).as_bytes()).await?;
    wr.write_all(body).await?;
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_heads_one_after_the_other() {
        let mut rd: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut buf = Vec::new();
        let first = read_head(&mut rd, &mut buf, 1024).await.unwrap().unwrap();
        assert_eq!(first, "GET /a HTTP/1.1\r\nHost: x");
        assert_eq!(target(&first), "/a");
        let second = read_head(&mut rd, &mut buf, 1024).await.unwrap().unwrap();
        assert_eq!(target(&second), "/b");
        assert!(read_head(&mut rd, &mut buf, 1024).await.unwrap().is_none());
        let mut long: &[u8] = &[b'x'; 8192];
        assert!(read_head(&mut long, &mut Vec::new(), 1024).await.is_err());
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_head(&mut cut, &mut Vec::new(), 1024).await.is_err());
    }

    #[tokio::test]
    async fn writes_a_response() {
        let mut out = Vec::new();
        write_response(&mut out, "503 Service Unavailable", "text/plain", &[("X-A", "b")], b"no", true).await.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nX-A: b\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\nno"
        );
        assert_eq!(
            head("200 OK", "application/json", &[("Transfer-Encoding", "chunked")], None, false),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}
