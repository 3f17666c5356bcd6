//! Extension example: an HTTP health probe, as an actor.
//!
//! A service opts in with
//! `health = { probe = "http", options = { url = "http://127.0.0.1:8765/" } }`;
//! its `ServiceActor` then sends this actor a `ProbeHealth` every health
//! interval, and anything but a 2xx/3xx answer within two seconds counts as a
//! failed probe (the service is killed and restarted under its backoff).
//!
//! The binary is all of psm plus this probe:
//! `cargo run --example http_probe -- --root DIR up`.

use std::process::ExitCode;
use std::time::Duration;

use actix::prelude::*;
use psm::supervisor::{Extensions, ProbeHealth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Stateless: one actor serves the probes of every service that names it.
struct HttpProbeActor;

impl Actor for HttpProbeActor {
    type Context = Context<Self>;
}

impl Handler<ProbeHealth> for HttpProbeActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, msg: ProbeHealth, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            let url = msg.options["url"]
                .as_str()
                .ok_or("http probe: options.url is missing")?
                .to_string();
            tokio::time::timeout(Duration::from_secs(2), get(&url))
                .await
                .map_err(|_| format!("{url}: no answer within 2s"))?
        })
    }
}

/// A minimal HTTP/1.0 GET: enough to read the status line, without pulling
/// an HTTP client into an example.
async fn get(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = vec![0u8; 64];
    let n = stream
        .read(&mut head)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {status}"))
    }
}

fn main() -> ExitCode {
    psm::cli::main(Extensions::new().probe("http", || HttpProbeActor.start().recipient()))
}
