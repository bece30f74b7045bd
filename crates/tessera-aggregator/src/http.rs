//! The aggregator's read-only HTTP endpoint (hyper, HTTP/1.1):
//!
//! - `GET /`: the status page (see [`StatusSnapshot::html`]);
//! - `GET /metrics`: Prometheus text format;
//! - `GET /status.json`: the snapshot as JSON.
//!
//! Nothing here changes the run; every other method is refused. It has no
//! authentication, so bind it to loopback or put an authenticating reverse
//! proxy in front.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::status::StatusSnapshot;

/// The snapshot the daemon updates and the endpoint serves.
pub(crate) type SharedStatus = Arc<RwLock<StatusSnapshot>>;

/// Bind `addr` now (so a taken port is reported at startup) and serve in a
/// background task on the current tokio runtime. Returns the bound address.
pub(crate) fn spawn(addr: SocketAddr, status: SharedStatus) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "status endpoint: accept failed");
                    continue;
                }
            };
            let status = status.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let status = status.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &status)) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "status endpoint: connection ended");
                }
            });
        }
    });
    Ok((local, task))
}

fn respond(req: &Request<Incoming>, status: &SharedStatus) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "read-only endpoint\n".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let snapshot = match status.read() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", snapshot.html()),
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", snapshot.prometheus()),
        "/status.json" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&snapshot).unwrap_or_else(|_| "{}".into()),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The page loads nothing: no script, no external style, no image.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_page_metrics_json_and_refuses_writes() {
        let status: SharedStatus = Arc::default();
        status.write().unwrap().current_round = Some(9);
        let (addr, task) = spawn("127.0.0.1:0".parse().unwrap(), status.clone()).unwrap();
        let close = "Connection: close\r\n\r\n";
        let page = get(addr, &format!("GET / HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("id=\"current-round\">9<"), "{page}");
        assert!(page.contains("content-security-policy: default-src 'none'"), "{page}");
        let metrics = get(addr, &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(metrics.contains("text/plain; version=0.0.4") && metrics.contains("tessera_round_current 9"));
        // The endpoint reads the live snapshot.
        status.write().unwrap().current_round = Some(10);
        let json = get(addr, &format!("GET /status.json HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(json.contains("\"current_round\": 10"), "{json}");
        let post = get(addr, &format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}")).await;
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("allow: GET, HEAD"), "{post}");
        let missing = get(addr, &format!("GET /admin HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        task.abort();
    }
}
