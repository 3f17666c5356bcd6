//! The CLI's side of the control socket: a blocking request/response.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{Request, Response};
use crate::paths::Paths;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no coordinator is running for {0}; start one with `psm up`")]
    NotRunning(String),
    #[error("talking to the coordinator at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the coordinator sent an unreadable reply: {0}")]
    Protocol(String),
    #[error("not talking to {socket}: {problem}")]
    Untrusted { socket: String, problem: String },
}

/// Sends one request and waits up to `timeout` for the response.
pub fn request(paths: &Paths, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = paths.control_socket();
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    // A socket outside the root sits in a shared place (/tmp): talk to it
    // only in a directory that is ours alone, or another user could answer.
    if let Some(dir) = path.parent().filter(|d| *d != paths.runtime_dir()) {
        if dir.symlink_metadata().is_ok() {
            let uid = nix::unistd::geteuid().as_raw();
            if let Some(problem) = crate::paths::private_dir_problem(dir, uid) {
                return Err(ClientError::Untrusted {
                    socket: shown,
                    problem,
                });
            }
        }
    }
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(paths.root().display().to_string()))
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    // A coordinator at its connection cap answers `busy` and closes before
    // reading anything, so the write may fail while its answer is waiting
    // to be read: read it before reporting the write's error.
    let written = send_all(&stream, &line);
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    // A killed coordinator keeps its listening socket (and its lock) until
    // its last thread has exited, which under load takes a while: the
    // connection is accepted, then reset. Without a live coordinator holding
    // the lock, that is "not running", not an I/O puzzle.
    let gone = || ClientError::NotRunning(paths.root().display().to_string());
    if reply.is_empty() {
        if let Err(e) = written {
            return Err(if left(paths) { gone() } else { io(e) });
        }
    }
    if let Err(e) = read {
        return Err(if left(paths) { gone() } else { io(e) });
    }
    if reply.is_empty() {
        if left(paths) {
            return Err(gone());
        }
        return Err(ClientError::Protocol(
            "connection closed without a reply".into(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Whether no live coordinator holds the root's lock (none ever did, or the
/// one that did has died and is still leaving).
fn left(paths: &Paths) -> bool {
    !matches!(super::CoordinatorLock::holder(paths), Some(Some(_)))
}

/// Writes `buf` so that a coordinator that has closed the connection is an
/// error (EPIPE), never a SIGPIPE: a printing command does not ignore it
/// (`cli::entry`), and would otherwise die without a word.
fn send_all(stream: &UnixStream, buf: &[u8]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{send, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut rest = buf;
        while !rest.is_empty() {
            match send(stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::fd::AsRawFd;
        // No MSG_NOSIGNAL there: the socket itself is told (SO_NOSIGPIPE).
        let one: libc::c_int = 1;
        // SAFETY: a valid socket, an int option of the right size.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::io::Write::write_all(&mut &*stream, buf)
    }
}
