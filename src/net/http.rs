//! Serves HTTP/1 connections with hyper directly, because `axum::serve` sets no read timeouts: a client
//! that sends half a request line, or a body slower than anyone would, held a socket and a task
//! forever. Here the request line and headers must arrive within the header timeout (which also closes
//! idle keep-alive connections), and a body within the body timeout of the first read.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::Service;

use crate::config::HttpSettings;

/// The read timeouts of `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
}

impl Timeouts {
    pub fn from_settings(http: &HttpSettings) -> Timeouts {
        Timeouts {
            header: Duration::from_secs(http.header_read_timeout_secs),
            body: Duration::from_secs(http.body_read_timeout_secs),
        }
    }
}

/// Serves one connection until the client is done, a timeout closes it, or `stop` turns true — then
/// the request in flight is answered and the connection closed. `guard` (the connection's cap slot)
/// travels with the socket, also into a WebSocket session after an upgrade, and is released exactly
/// when the socket closes.
pub async fn serve_connection<S, G>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    guard: G,
    service: S,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    G: Send + Unpin + 'static,
{
    let body_timeout = timeouts.body;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut service = service.clone();
        let mut req = req.map(|body| Body::new(TimedBody::new(body, body_timeout)));
        // Handlers that need the client's address (login throttling) read it as axum's ConnectInfo.
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(req).await
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    let conn = builder.serve_connection(TokioIo::new(Guarded::new(stream, guard)), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // Errors here are the client's (timeouts, resets, malformed requests): nothing to report.
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The request body did not arrive within the body read timeout.
#[derive(Debug)]
pub struct BodyTimeout;

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body not received in time")
    }
}

impl StdError for BodyTimeout {}

/// Whether `error`, or anything in its source chain, is a `BodyTimeout` (extractors see it wrapped).
pub fn is_body_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A request body that must arrive in full within `limit` of its first read, so a client trickling
/// it cannot hold a connection and a task indefinitely. The deadline starts at the first read rather
/// than with the request, so a handler is never blamed for the client.
struct TimedBody {
    inner: Incoming,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration) -> TimedBody {
        TimedBody { inner, limit, deadline: None }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = this.limit;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that carries a guard (its connection slot) for as long as it is open.
struct Guarded<G> {
    io: TcpStream,
    _guard: G,
    /// A replacement being written in place of one of hyper's automatic error responses: (bytes,
    /// written so far, length of the response it replaces).
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

/// hyper answers requests it cannot parse (400), URIs it finds too long (414) and heads too large
/// (431) itself, with an empty body and no way to configure it. Every client error of the hub has
/// the JSON error body, so such a response is replaced on its way out by the same status with the
/// body. It is recognised by its status and `content-length: 0`: the hub's own 400/414/431 answers
/// always carry a body.
fn replace_automatic_error(out: &[u8]) -> Option<Vec<u8>> {
    let (code, message) = match out.get(..12)? {
        b"HTTP/1.1 400" => (400, "Malformed HTTP request"),
        b"HTTP/1.1 414" => (414, "URI too long"),
        b"HTTP/1.1 431" => (431, "Request header fields too large"),
        _ => return None,
    };
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0") || out.len() != head_end + 4 {
        return None;
    }
    let reason = axum::http::StatusCode::from_u16(code).ok()?.canonical_reason().unwrap_or("");
    let body = format!(r#"{{"error":{code},"message":"{message}"}}"#);
    Some(
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json;charset=UTF-8\r\ncontent-length: {}\r\n\
             connection: close\r\naccess-control-allow-origin: *\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<G: Unpin> Guarded<G> {
    fn new(io: TcpStream, guard: G) -> Self {
        Guarded { io, _guard: guard, rewrite: None }
    }

    /// Writes a pending replacement to the end, then reports the replaced response as written.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, done, replaced)) = self.rewrite.as_mut() else { return Poll::Ready(Ok(0)) };
        while *done < bytes.len() {
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let replaced = *replaced;
        self.rewrite = None;
        Poll::Ready(Ok(replaced))
    }
}

impl<G: Unpin> AsyncRead for Guarded<G> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<G: Unpin> AsyncWrite for Guarded<G> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() {
            match replace_automatic_error(buf) {
                Some(bytes) => this.rewrite = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.io).poll_write(cx, buf),
            }
        }
        this.poll_rewrite(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() {
            // An automatic error response is a head alone, in the first slice.
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            match bufs.first().filter(|b| b.len() == total).and_then(|b| replace_automatic_error(b)) {
                Some(bytes) => this.rewrite = Some((bytes, 0, total)),
                None => return Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            }
        }
        this.poll_rewrite(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What an HTTP connection over the cap is sent before it is closed: written without blocking and
/// without a task, so refusing costs nothing that lives on.
pub const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 51\r\nconnection: close\r\n\r\n{\"error\":503,\"message\":\"Too many open connections\"}";

/// Answers a connection over the cap with `BUSY_RESPONSE` if the socket takes it at once, and closes it.
pub fn refuse_busy(stream: TcpStream) {
    let _ = stream.try_write(BUSY_RESPONSE);
}

/// The client's address, when the server recorded it (`ConnectInfo`); used to throttle logins.
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(Peer(addr.map(|a| a.0.ip())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_error_responses_get_the_json_body() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 14:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(replace_automatic_error(hyper_400).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert_eq!(body, r#"{"error":400,"message":"Malformed HTTP request"}"#);
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(replace_automatic_error(hyper_431).is_some());
        // The hub's own responses are left alone: they have bodies, or other statuses.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 46\r\n\r\n{\"error\":400,\"message\":\"Invalid request parameters\"}";
        assert!(replace_automatic_error(own).is_none());
        assert!(replace_automatic_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replace_automatic_error(b"HTTP/1.1 400 Bad").is_none());
    }

    #[test]
    fn busy_response_declares_its_length() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{text}");
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn a_wrapped_body_timeout_is_recognised() {
        let inner: Box<dyn StdError + Send + Sync> = Box::new(BodyTimeout);
        let wrapped = axum::Error::new(axum::Error::new(inner));
        assert!(is_body_timeout(&wrapped));
        assert!(!is_body_timeout(&io::Error::other("reset")));
    }
}
