//! Starting a process detached from psm: a new session (and so a new process
//! group it leads), stdin from /dev/null, stdout and stderr appended straight to
//! a log file. No pipe runs through psm, so the process survives psm's death and
//! never gets SIGPIPE from it.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to start.
#[derive(Debug, Clone)]
pub struct DetachedSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
    pub log: PathBuf,
}

/// Opens (creating, mode 0600) a log file for appending, creating its
/// directory (0700) if needed. The directory must be a real one the user
/// owns and the file a regular file: a planted link or FIFO is refused
/// (see [`crate::fsx`]), so service output never lands outside the root.
pub fn open_log(path: &Path) -> io::Result<File> {
    crate::fsx::open_log(path)
}

/// Builds the command: new session, /dev/null stdin, output to the log.
/// Returned unspawned so the caller can spawn it with std or tokio.
pub fn detached_command(spec: &DetachedSpec) -> io::Result<Command> {
    let log = open_log(&spec.log)?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    Ok(cmd)
}

/// Spawns the process detached; its pid is also its process-group id.
pub fn spawn_detached(spec: &DetachedSpec) -> io::Result<std::process::Child> {
    detached_command(spec)?.spawn()
}

/// A pipe whose ends are close-on-exec: no spawn inherits either (a
/// service holding a stamper's pipe would keep it from ever seeing the end
/// of its input; one holding the log watch's waker would stall its stop).
#[cfg(target_os = "linux")]
pub fn cloexec_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// macOS has no `pipe2`: the flag is set just after. A spawn on another
/// thread in between could inherit an end; the coordinator spawns services
/// from its actor thread, one at a time.
#[cfg(not(target_os = "linux"))]
pub fn cloexec_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let (reader, writer) = nix::unistd::pipe()?;
    for fd in [&reader, &writer] {
        fcntl(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok((reader, writer))
}
