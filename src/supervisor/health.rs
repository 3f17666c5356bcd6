//! Health probes. Unknown is never healthy: a probe that cannot decide
//! reports a failure with the reason.

use std::path::Path;

use tracing::warn;

use crate::process::sockets::{self, Owner};
use crate::process::Identity;

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

/// Healthy when `host:port` accepts a TCP connection within a second *and*
/// the listening socket belongs to the service's process tree (`leader`, its
/// descendants and its group; Linux and macOS). Something else answering on
/// the port is a failure, not health. Where the owner cannot be read (other
/// systems) the connection alone decides.
pub async fn probe_port(host: &str, port: u16, leader: Identity) -> Result<(), String> {
    let connect = tokio::net::TcpStream::connect((host, port));
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("port {host}:{port}: {e}")),
        Err(_) => {
            return Err(format!(
                "port {host}:{port}: no answer within {CONNECT_TIMEOUT:?}"
            ))
        }
    };
    // The address that answered, so the check looks at the right listener.
    let ip = stream
        .peer_addr()
        .map_err(|e| format!("port {host}:{port}: {e}"))?
        .ip();
    drop(stream);
    let owner = actix_rt::task::spawn_blocking(move || sockets::owner_check(ip, port, leader))
        .await
        .map_err(|e| format!("port {host}:{port}: owner check failed: {e}"))?;
    port_verdict(host, port, owner)
}

/// The probe's verdict on who holds the port.
fn port_verdict(host: &str, port: u16, owner: Owner) -> Result<(), String> {
    match owner {
        Owner::Service | Owner::Unknown => Ok(()),
        Owner::Nobody => Err(format!("port {host}:{port}: nothing of the service listens there")),
        Owner::Stranger => Err(format!(
            "port {host}:{port} answers, but its listening socket belongs to a process outside the service"
        )),
    }
}

/// How old a health file is: `now - mtime`, or `mtime - now` for a file
/// dated in the future (a wrong clock, a `touch -d`), which must not pass as
/// fresh; the flag says which.
pub fn file_age(now: SystemTime, modified: SystemTime) -> (Duration, bool) {
    match now.duration_since(modified) {
        Ok(age) => (age, false),
        Err(ahead) => (ahead.duration(), true),
    }
}

/// Healthy when `path` was modified less than `max_age` ago (a heartbeat
/// file). A modification time in the future counts by its distance from
/// now, and is logged.
pub fn probe_file(path: &Path, max_age: Duration) -> Result<(), String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("health file {}: {e}", path.display()))?;
    let (age, future) = file_age(SystemTime::now(), modified);
    let shown = humantime::format_duration(Duration::from_secs(age.as_secs()));
    if future {
        warn!(file = %path.display(), ahead_ms = age.as_millis() as u64, "health file is dated in the future; counted as that old");
    }
    if age < max_age {
        Ok(())
    } else if future {
        Err(format!(
            "health file {} is dated {shown} in the future (max age {})",
            path.display(),
            humantime::format_duration(max_age)
        ))
    } else {
        Err(format!(
            "health file {} is {shown} old (max {})",
            path.display(),
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
        let me = Identity::of(std::process::id() as i32).unwrap();
        assert!(probe_port("127.0.0.1", port, me).await.is_ok());
        drop(listener);
        assert!(probe_port("127.0.0.1", port, me).await.is_err());
    }

    #[test]
    fn file_age_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        for (what, modified, want) in [
            ("past", now - s(5), (s(5), false)),
            ("now", now, (s(0), false)),
            ("an hour in the future", now + s(3600), (s(3600), true)),
        ] {
            assert_eq!(file_age(now, modified), want, "{what}");
        }
    }

    #[test]
    fn a_file_dated_in_the_future_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("beat");
        let file = std::fs::File::create(&f).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        let err = probe_file(&f, Duration::from_secs(30)).unwrap_err();
        assert!(err.contains("in the future"), "{err}");
    }
}
