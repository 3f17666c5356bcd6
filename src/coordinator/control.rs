//! The control socket: [`Paths::control_socket`], mode 0600 inside a 0700
//! directory, and a peer-credential check on every connection, so only the
//! coordinator's own user can control it. One JSON request per line, one JSON
//! response per line (`protocol`).
//!
//! Whatever clients do, the socket costs the coordinator a bounded amount
//! (issue 9 §4), because it shares the actor thread and the file-descriptor
//! table with supervision:
//! - at most [`connection_cap`] connections are served at once; one more is
//!   answered "busy" and closed at once, so a crowd of idle clients cannot
//!   take the descriptors that spawning and logging need;
//! - a connection that sends no complete request for `[control] idle-timeout`
//!   is closed, and so is one that does not read its replies for as long;
//! - a request line is read through a codec with a maximum length: a longer
//!   one is answered with an error and the connection closed;
//! - when `accept` itself fails (EMFILE, ENFILE, ENOBUFS, …) the loop backs off
//!   ([`accept_delay`]) instead of retrying at once. A failing accept returns
//!   without waiting, so an immediate retry never yields: the loop would spin
//!   a core, starve every actor on the thread (no restarts, no heartbeat) and
//!   log each failure. Each burst of failures is logged once ([`Burst`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, info, warn};

use super::actor::{Control, CoordinatorActor};
use super::protocol::{parse_request, Response, MAX_REQUEST_LINE};
use crate::config::ControlPolicy;
use crate::paths::Paths;

/// Binds the socket (before the runtime starts, so errors surface at once).
/// Only the lock holder may clear the path (`_held` proves it is us), and
/// only of a socket of ours ([`clear_stale_socket`]).
pub fn bind(
    paths: &Paths,
    _held: &super::CoordinatorLock,
) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let path = paths.control_socket();
    clear_stale_socket(&path)?;
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Removes what is at the socket's path when it is a socket of ours: only
/// the lock holder calls this, so nothing serving that path is this root's
/// coordinator. Anything else stays and is reported in one line: a link,
/// FIFO, directory or regular file was put there by someone (psm never
/// removes what it did not make), and another user's socket is theirs.
fn clear_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        anyhow::bail!("control socket path {} has no directory", path.display());
    };
    // Through the directory's fd, without following a link at the name.
    let dir = crate::fsx::Dir::open(parent)
        .with_context(|| format!("opening socket directory {}", parent.display()))?;
    let Some(stat) = dir.stat(name)? else {
        return Ok(());
    };
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::Socket {
        anyhow::bail!(
            "{} is a {}, not psm's control socket; psm will not remove it: move it out of the way and retry",
            path.display(),
            crate::fsx::kind_name(kind)
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if stat.st_uid != me {
        anyhow::bail!(
            "control socket {} belongs to uid {}, not to you (uid {me}); psm will not remove it: remove it yourself and retry",
            path.display(),
            stat.st_uid
        );
    }
    // A socket of ours at this root's path, while we hold the root's lock:
    // whoever serves it (a dead coordinator's leftover, a hung one the
    // watchdog is replacing, an impostor) is not this root's coordinator,
    // and the path is ours to take back.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        tracing::warn!(
            socket = %path.display(),
            "a process that does not hold this root's lock answered on the control socket; taking the path back"
        );
    }
    dir.remove(name)
        .with_context(|| format!("removing stale control socket {}", path.display()))?;
    Ok(())
}

/// Accepts connections for as long as the system runs.
pub fn serve(
    listener: std::os::unix::net::UnixListener,
    coordinator: Addr<CoordinatorActor>,
    limits: ControlPolicy,
) {
    let cap = connection_cap(limits.max_connections, open_file_limit());
    info!(
        max_connections = cap,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "control socket limits"
    );
    actix_rt::spawn(async move {
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "control socket unusable");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(cap));
        let mut failures = Burst::default();
        let mut refusals = Burst::default();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Some(n) = failures.end() {
                        info!(failures = n, "accepting control connections again");
                    }
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            if let Some(n) = refusals.end() {
                                info!(refused = n, "serving control connections again");
                            }
                            let idle = limits.idle_timeout;
                            actix_rt::spawn(connection(stream, coordinator.clone(), idle, slot));
                        }
                        Err(_) => {
                            if refusals.event() {
                                warn!(
                                    max_connections = cap,
                                    "control connections at their cap; refusing more as busy (logged once per burst)"
                                );
                            }
                            refuse_busy(&stream, cap);
                        }
                    }
                }
                Err(e) => {
                    let first = failures.event();
                    let delay = accept_delay(failures.count);
                    if first {
                        warn!(error = %e, "accept failed; backing off up to 1s between tries (logged once per burst)");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    });
}

/// Connections served at once: the configured cap, but never more than a
/// quarter of the open-file limit, so connections alone can never exhaust
/// the descriptors supervision needs (macOS's default limit is 256).
pub fn connection_cap(configured: u32, open_files: Option<u64>) -> usize {
    let share = open_files.map_or(u64::MAX, |n| n / 4).max(1);
    (u64::from(configured).min(share)).max(1) as usize
}

/// The soft RLIMIT_NOFILE, if it is finite and readable.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The wait before the next accept after `failures` failures in a row:
/// 10 ms, doubling, at most 1 s — quick to recover once descriptors free up,
/// and at most a thousand wasted wake-ups over a long exhaustion.
pub fn accept_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(7);
    Duration::from_millis(10 << doublings).min(Duration::from_secs(1))
}

/// Events of one kind in a row, so that a burst is logged once rather than
/// once per event (the old accept loop wrote ~70 MB/s of the same line).
#[derive(Debug, Default)]
pub struct Burst {
    /// Events since the burst began; 0 outside a burst.
    pub count: u32,
}

impl Burst {
    /// Counts one event; true for the first of a burst, the one to log.
    pub fn event(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count == 1
    }

    /// Ends the burst, returning its size if there was one.
    pub fn end(&mut self) -> Option<u32> {
        let n = std::mem::take(&mut self.count);
        (n > 0).then_some(n)
    }
}

/// Tells a client over the cap why it is turned away, without waiting: the
/// reply is one short line into an empty socket buffer; if it does not fit,
/// the client sees the connection close, which says as much.
/// The pid in `data` still tells a watchdog's ping that the coordinator is
/// alive and answering.
fn refuse_busy(stream: &UnixStream, cap: usize) {
    let response = Response {
        data: serde_json::json!({ "pid": std::process::id(), "busy": true }),
        ..Response::error(format!(
            "busy: the coordinator already serves {cap} control connections; try again shortly"
        ))
    };
    let _ = stream.try_write(&line_of(&response));
}

async fn connection(
    stream: UnixStream,
    coordinator: Addr<CoordinatorActor>,
    idle: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let me = nix::unistd::geteuid().as_raw();
    let peer = stream.peer_cred().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    if peer.as_ref().ok() != Some(&me) {
        warn!(peer = ?peer.map_err(|e| e.to_string()), "refused a control connection from another user");
        let _ = reply(
            &mut write,
            idle,
            &Response::error("refused: not the coordinator's user"),
        )
        .await;
        return;
    }
    let mut requests = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_REQUEST_LINE));
    loop {
        let line = match timeout(idle, requests.next()).await {
            Ok(Some(Ok(line))) => line,
            Ok(None) => return,
            // After any decoding error the stream ends, so each closes.
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                let message = format!(
                    "bad request: longer than {MAX_REQUEST_LINE} bytes; closing the connection"
                );
                let _ = reply(&mut write, idle, &Response::error(message)).await;
                return;
            }
            Ok(Some(Err(LinesCodecError::Io(e)))) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let message = "bad request: not UTF-8; closing the connection";
                    let _ = reply(&mut write, idle, &Response::error(message)).await;
                }
                return;
            }
            Err(_) => {
                debug!(
                    idle_ms = idle.as_millis() as u64,
                    "closing an idle control connection"
                );
                let message = format!(
                    "closed: no request within {}",
                    humantime::format_duration(idle)
                );
                let _ = reply(&mut write, idle, &Response::error(message)).await;
                return;
            }
        };
        let response = match parse_request(&line) {
            Ok(req) => {
                debug!(?req, "control request");
                coordinator
                    .send(Control(req))
                    .await
                    .unwrap_or_else(|_| Response::error("the coordinator is stopping"))
            }
            Err(response) => response,
        };
        if reply(&mut write, idle, &response).await.is_err() {
            return;
        }
    }
}

/// Writes one response line; a client that does not read it within `idle`
/// is as good as gone.
async fn reply(write: &mut OwnedWriteHalf, idle: Duration, response: &Response) -> Result<(), ()> {
    match timeout(idle, write.write_all(&line_of(response))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn line_of(response: &Response) -> Vec<u8> {
    // Serializing a Response cannot fail: strings and JSON values only.
    let mut line = serde_json::to_vec(response).expect("serializable");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configured cap, limited to a quarter of the open-file limit.
    #[test]
    fn connection_cap_table() {
        // (configured, RLIMIT_NOFILE, expected)
        let table = [
            (64, Some(1024), 64),
            (64, Some(256), 64),
            (64, Some(200), 50),
            (1024, Some(256), 64),
            (64, None, 64),
            (1, Some(1_000_000), 1),
            (64, Some(3), 1),
            (64, Some(0), 1),
        ];
        for (configured, limit, expected) in table {
            assert_eq!(
                connection_cap(configured, limit),
                expected,
                "{configured} {limit:?}"
            );
        }
    }

    /// 10 ms doubling to 1 s, whatever the count.
    #[test]
    fn accept_delay_table() {
        let table = [
            (0, 10),
            (1, 10),
            (2, 20),
            (3, 40),
            (7, 640),
            (8, 1000),
            (9, 1000),
            (u32::MAX, 1000),
        ];
        for (failures, ms) in table {
            assert_eq!(
                accept_delay(failures),
                Duration::from_millis(ms),
                "{failures}"
            );
        }
    }

    /// Only the first event of a burst is logged; the end reports its size.
    #[test]
    fn bursts_log_once() {
        let mut burst = Burst::default();
        assert_eq!(burst.end(), None);
        let logged: Vec<bool> = (0..5).map(|_| burst.event()).collect();
        assert_eq!(logged, [true, false, false, false, false]);
        assert_eq!(burst.end(), Some(5));
        assert_eq!(burst.end(), None);
        assert!(burst.event(), "a new burst logs again");
        burst.count = u32::MAX;
        assert!(!burst.event(), "saturates, never wraps to a new first");
    }
}
