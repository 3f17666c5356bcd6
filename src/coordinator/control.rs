//! The control socket: `<root>/.psm/coordinator.sock`, mode 0600 inside the
//! 0700 runtime directory, and a peer-credential check on every connection,
//! so only the coordinator's own user can control it. One JSON request per
//! line, one JSON response per line.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use actix::Addr;
use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::actor::{Control, CoordinatorActor};
use super::protocol::{Request, Response};
use crate::paths::Paths;

/// The longest request line accepted; anything longer is not ours.
const MAX_LINE: u64 = 64 * 1024;

/// Binds the socket (before the runtime starts, so errors surface at once).
/// A socket file left by a dead coordinator is replaced: we hold the
/// coordinator lock, so nobody else can be serving it.
pub fn bind(paths: &Paths) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let path = paths.control_socket();
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Accepts connections for as long as the system runs.
pub fn serve(listener: std::os::unix::net::UnixListener, coordinator: Addr<CoordinatorActor>) {
    actix_rt::spawn(async move {
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "control socket unusable");
                return;
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    actix_rt::spawn(connection(stream, coordinator.clone()));
                }
                Err(e) => warn!(error = %e, "accept failed"),
            }
        }
    });
}

async fn connection(stream: UnixStream, coordinator: Addr<CoordinatorActor>) {
    let me = nix::unistd::geteuid().as_raw();
    let peer = stream.peer_cred().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    if peer.as_ref().ok() != Some(&me) {
        warn!(peer = ?peer.map_err(|e| e.to_string()), "refused a control connection from another user");
        let _ = reply(
            &mut write,
            &Response::error("refused: not the coordinator's user"),
        )
        .await;
        return;
    }
    let mut lines = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                debug!(?req, "control request");
                coordinator
                    .send(Control(req))
                    .await
                    .unwrap_or_else(|_| Response::error("the coordinator is stopping"))
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        if reply(&mut write, &response).await.is_err() {
            return;
        }
    }
}

async fn reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    // Serializing a Response cannot fail: strings and JSON values only.
    let mut line = serde_json::to_vec(response).expect("serializable");
    line.push(b'\n');
    write.write_all(&line).await
}
