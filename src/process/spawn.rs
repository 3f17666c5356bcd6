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
    let nofile = child_nofile();
    // SAFETY: setsid and setrlimit are async-signal-safe system calls; the
    // closure only reads a copied number, no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // Only the soft limit goes back; the hard one is whatever the
            // child has now (someone may have lowered it with prlimit since),
            // and a limit that cannot be set is no reason not to start.
            if let Some(soft) = nofile {
                use nix::sys::resource::{getrlimit, setrlimit, Resource};
                if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
                    let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard);
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// The soft RLIMIT_NOFILE psm found at start, once it raised its own: what
/// its services get back (see [`raise_nofile_limit`]).
static STARTED_WITH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The soft limit a child is given back, if psm raised its own.
fn child_nofile() -> Option<u64> {
    STARTED_WITH.get().copied()
}

/// Raises this process's soft limit on open files to its hard limit, as a
/// supervisor of thousands of services must (each running child costs the
/// coordinator a file descriptor or two, the control socket's connections
/// more); returns (old soft, new soft) when it changed. Children are given
/// the soft limit psm started with, so a service sees the limit it would
/// have had started from the user's shell, not psm's. An infinite hard
/// limit (macOS) is not a number `setrlimit` takes for files: the soft
/// limit is then left alone.
pub fn raise_nofile_limit() -> io::Result<Option<(u64, u64)>> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let Some(target) = raised_soft_limit(soft, hard, RLIM_INFINITY) else {
        return Ok(None);
    };
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    let _ = STARTED_WITH.set(soft);
    Ok(Some((soft, target)))
}

/// The soft limit to raise to: the hard one, when it is higher and finite.
fn raised_soft_limit(soft: u64, hard: u64, infinity: u64) -> Option<u64> {
    (hard != infinity && hard > soft).then_some(hard)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit rises to a higher finite hard limit, else stays.
    #[test]
    fn soft_limit_rises_to_a_finite_hard_limit() {
        const INF: u64 = u64::MAX;
        for (soft, hard, want) in [
            (1024, 524_288, Some(524_288)),
            (1024, 1024, None),
            (20_000, 20_000, None),
            (1024, INF, None), // macOS: kern.maxfilesperproc caps it, not us
            (INF, INF, None),
        ] {
            assert_eq!(raised_soft_limit(soft, hard, INF), want, "{soft} {hard}");
        }
    }
}
