//! Health probes. Unknown is never healthy: a probe that cannot decide
//! reports a failure with the reason.

use std::path::Path;

use actix::{Actor, AsyncContext, Context};
use std::time::{Duration, SystemTime};

/// Runs `tick` on the actor every `interval`, on whole multiples of it since
/// the epoch. Every service's health check and the coordinator's heartbeat
/// are scheduled this way, so one round's registry updates arrive together
/// and cost one or two writes, not one each.
pub fn every_round<A>(ctx: &mut Context<A>, interval: Duration, tick: fn(&mut A, &mut Context<A>))
where
    A: Actor<Context = Context<A>>,
{
    ctx.run_later(
        crate::time::until_next_multiple(interval),
        move |act, ctx| {
            tick(act, ctx);
            ctx.run_interval(interval, tick);
        },
    );
}

/// How long a port probe may wait for the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Healthy when something accepts a TCP connection on `host:port` within a second.
pub async fn probe_port(host: &str, port: u16) -> Result<(), String> {
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("port {host}:{port}: {e}")),
        Err(_) => Err(format!(
            "port {host}:{port}: no answer within {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// Healthy when `path` was modified less than `max_age` ago (a heartbeat file).
pub fn probe_file(path: &Path, max_age: Duration) -> Result<(), String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("health file {}: {e}", path.display()))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    if age < max_age {
        Ok(())
    } else {
        Err(format!(
            "health file {} is {} old (max {})",
            path.display(),
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_probe_ages() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("beat");
        assert!(probe_file(&f, Duration::from_secs(5))
            .unwrap_err()
            .contains("beat"));
        std::fs::write(&f, "x").unwrap();
        assert!(probe_file(&f, Duration::from_secs(5)).is_ok());
        assert!(probe_file(&f, Duration::ZERO).is_err());
    }

    #[actix_rt::test]
    async fn port_probe_sees_a_listener_and_its_absence() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(probe_port("127.0.0.1", port).await.is_ok());
        drop(listener);
        assert!(probe_port("127.0.0.1", port).await.is_err());
    }
}
