//! Starting a process detached from psm: a new session (and so a new process
//! group it leads), stdin from /dev/null, stdout and stderr appended straight to
//! a log file. No pipe runs through psm, so the process survives psm's death and
//! never gets SIGPIPE from it.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
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

/// Builds the command: new session, /dev/null stdin, output to the log,
/// every signal at its default. Returned unspawned so the caller can spawn
/// it with std or tokio — outside the coordinator only: there the reaper
/// (`process::reaper`) takes every child's exit, so the coordinator and
/// extension kinds spawn through [`spawn_pid`] under `reaper::spawn_owned`.
pub fn detached_command(spec: &DetachedSpec) -> io::Result<Command> {
    check_cwd(spec)?;
    detached_command_to(spec, None, open_log(&spec.log)?.into())
}

/// The working directory must be there before the start: the child's
/// `chdir` fails with the same "No such file or directory" as a missing
/// program, so the error would not say which one is missing.
fn check_cwd(spec: &DetachedSpec) -> io::Result<()> {
    let Some(cwd) = &spec.cwd else {
        return Ok(());
    };
    let why = match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => io::Error::from(io::ErrorKind::NotADirectory),
        Err(e) => e,
    };
    Err(io::Error::new(
        why.kind(),
        format!("working directory {}: {why}", cwd.display()),
    ))
}

/// [`detached_command`] with the given stdin (else /dev/null) and output.
fn detached_command_to(
    spec: &DetachedSpec,
    stdin: Option<OwnedFd>,
    output: OwnedFd,
) -> io::Result<Command> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(output.try_clone()?)
        .stderr(output);
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
            default_dispositions();
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

/// Puts every signal this process ignores back to its default, in a child
/// about to `exec` (handlers go back by themselves at `exec`; an ignored
/// signal stays ignored). A service must not inherit what whoever started
/// psm ignored (`nohup`'s SIGHUP, a shell job's SIGINT and SIGQUIT): an
/// ignored stop signal would make every stop wait out its timeout.
/// Async-signal-safe: `sigaction` only; SIGKILL, SIGSTOP and the C
/// library's internal signals refuse, which changes nothing.
fn default_dispositions() {
    // SAFETY: sigaction with a zeroed struct whose handler is SIG_DFL.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..NSIG {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
}

/// One past the highest signal number (Linux 64, macOS 31).
#[cfg(target_os = "linux")]
const NSIG: libc::c_int = 65;
#[cfg(not(target_os = "linux"))]
const NSIG: libc::c_int = 32;

/// Where a started process reads and writes: stdin from `stdin` (else
/// /dev/null), stdout and stderr to `output` (else the spec's log, opened
/// for appending).
#[derive(Debug, Default)]
pub struct Stdio3 {
    pub stdin: Option<OwnedFd>,
    pub output: Option<OwnedFd>,
}

/// Starts the process detached (see [`detached_command`]) and returns its
/// pid, leaving it unreaped: the caller reaps it (the coordinator's
/// [`super::reaper`]).
///
/// On Linux this is `posix_spawn` with `POSIX_SPAWN_SETSID`: glibc clones
/// with `CLONE_VM | CLONE_VFORK`, so the coordinator's page tables are
/// never copied, whatever its size. A `pre_exec` closure would force std
/// into fork + exec, and `posix_spawn` cannot set a resource limit: while
/// psm has raised its open-file limit (it does so only when its services
/// need it, see [`make_room_for`]), the child must be given the original
/// back before `exec`, so that case keeps the fork path.
pub fn spawn_pid(spec: &DetachedSpec, io: Stdio3) -> io::Result<i32> {
    check_cwd(spec)?;
    let output = match io.output {
        Some(fd) => fd,
        None => open_log(&spec.log)?.into(),
    };
    #[cfg(target_os = "linux")]
    if child_nofile().is_none() {
        return linux::posix_spawn_detached(spec, io.stdin.as_ref(), &output);
    }
    let mut cmd = detached_command_to(spec, io.stdin, output)?;
    // The std Child is dropped unwaited: dropping neither kills nor reaps.
    Ok(cmd.spawn()?.id() as i32)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::DetachedSpec;
    use std::collections::BTreeMap;
    use std::ffi::{CString, OsStr, OsString};
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    fn cstring(s: &OsStr) -> io::Result<CString> {
        CString::new(s.as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s:?} contains a NUL byte"),
            )
        })
    }

    /// Fails with the error code a posix_spawn call returned.
    fn check(code: libc::c_int) -> io::Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code))
        }
    }

    /// File actions, destroyed when dropped.
    struct Actions(libc::posix_spawn_file_actions_t);
    impl Drop for Actions {
        fn drop(&mut self) {
            // SAFETY: initialised in `posix_spawn_detached` before any use.
            unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
        }
    }

    /// Attributes, destroyed when dropped.
    struct Attrs(libc::posix_spawnattr_t);
    impl Drop for Attrs {
        fn drop(&mut self) {
            // SAFETY: initialised in `posix_spawn_detached` before any use.
            unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
        }
    }

    /// What `exec` resolves `program` to: itself when it names a path (has a
    /// `/`), else the first executable regular file of that name in `path`
    /// (the child's PATH; an empty entry is the working directory), as
    /// `execvp` searches. `cwd` is where the child starts: a relative entry
    /// is resolved there, as the child would.
    pub(super) fn resolve(
        program: &OsStr,
        path: Option<&OsStr>,
        cwd: Option<&Path>,
    ) -> io::Result<PathBuf> {
        if program.as_bytes().contains(&b'/') {
            return Ok(PathBuf::from(program));
        }
        if program.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // glibc's execvp default when PATH is unset.
        let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
        let mut denied = false;
        for dir in path.as_bytes().split(|&b| b == b':') {
            let dir = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir }));
            let candidate = dir.join(program);
            let seen_from = match cwd {
                Some(cwd) if candidate.is_relative() => cwd.join(&candidate),
                _ => candidate.clone(),
            };
            let Ok(meta) = std::fs::metadata(&seen_from) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if nix::unistd::access(&seen_from, nix::unistd::AccessFlags::X_OK).is_ok() {
                return Ok(seen_from);
            }
            denied = true;
        }
        Err(io::Error::from_raw_os_error(if denied {
            libc::EACCES
        } else {
            libc::ENOENT
        }))
    }

    pub(super) fn posix_spawn_detached(
        spec: &DetachedSpec,
        stdin: Option<&OwnedFd>,
        output: &OwnedFd,
    ) -> io::Result<i32> {
        // The child's environment: ours, with the spec's on top.
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        env.extend(spec.env.iter().cloned());
        let program = resolve(
            &spec.program,
            env.get(OsStr::new("PATH")).map(OsString::as_os_str),
            spec.cwd.as_deref(),
        )?;
        let envp = env
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                CString::new(kv).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "an environment variable contains a NUL byte",
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let argv = std::iter::once(&spec.program)
            .chain(&spec.args)
            .map(|a| cstring(a))
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = spec
            .cwd
            .as_deref()
            .map(|c| cstring(c.as_os_str()))
            .transpose()?;
        // SAFETY: every pointer handed over points into a CString, a Vec or
        // a struct that lives until the call returns; the actions and
        // attributes are initialised before use and destroyed on drop.
        unsafe {
            let mut actions = Actions(std::mem::zeroed());
            check(libc::posix_spawn_file_actions_init(&mut actions.0))?;
            let mut attrs = Attrs(std::mem::zeroed());
            check(libc::posix_spawnattr_init(&mut attrs.0))?;
            let a = &mut actions.0;
            match stdin {
                Some(fd) => check(libc::posix_spawn_file_actions_adddup2(a, fd.as_raw_fd(), 0))?,
                None => check(libc::posix_spawn_file_actions_addopen(
                    a,
                    0,
                    c"/dev/null".as_ptr(),
                    libc::O_RDONLY,
                    0,
                ))?,
            }
            check(libc::posix_spawn_file_actions_adddup2(
                a,
                output.as_raw_fd(),
                1,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                a,
                output.as_raw_fd(),
                2,
            ))?;
            if let Some(cwd) = &cwd {
                // glibc ≥ 2.29.
                check(libc::posix_spawn_file_actions_addchdir_np(a, cwd.as_ptr()))?;
            }
            // No signal blocked, and every one at its default (see
            // `default_dispositions`): SIGPIPE, which psm ignores, and any
            // that whoever started psm ignored.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigmask(&mut attrs.0, &empty))?;
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            check(libc::posix_spawnattr_setsigdefault(&mut attrs.0, &all))?;
            let flags = libc::POSIX_SPAWN_SETSID
                | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
                | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
            check(libc::posix_spawnattr_setflags(&mut attrs.0, flags))?;
            let spawn = |path: &CString, argv: &[CString]| -> io::Result<i32> {
                let mut argp: Vec<*mut libc::c_char> =
                    argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
                argp.push(std::ptr::null_mut());
                let mut envpp: Vec<*mut libc::c_char> =
                    envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
                envpp.push(std::ptr::null_mut());
                let mut pid = 0;
                check(libc::posix_spawn(
                    &mut pid,
                    path.as_ptr(),
                    &actions.0,
                    &attrs.0,
                    argp.as_ptr(),
                    envpp.as_ptr(),
                ))?;
                Ok(pid)
            };
            let path = cstring(program.as_os_str())?;
            match spawn(&path, &argv) {
                // A script without a `#!` line: `execvp` (std's fork path)
                // runs it with /bin/sh, so this path does too.
                Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                    let mut sh_argv = vec![c"/bin/sh".to_owned(), path.clone()];
                    sh_argv.extend(argv.into_iter().skip(1));
                    spawn(&c"/bin/sh".to_owned(), &sh_argv)
                }
                other => other,
            }
        }
    }
}

/// The soft RLIMIT_NOFILE psm found at start, once it raised its own: what
/// its services get back (see [`make_room_for`]).
static STARTED_WITH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The soft limit a child is given back, if psm raised its own.
fn child_nofile() -> Option<u64> {
    STARTED_WITH.get().copied()
}

/// Makes room for `services` services: raises this process's soft limit
/// on open files to its hard limit when the present one is too low for
/// them (see [`needs_more_files`]); returns (old soft, new soft) when it
/// changed. From then on services are started by fork + exec and given
/// back the soft limit psm was started with (`posix_spawn` cannot set a
/// limit), so a service sees the limit it would have had started from the
/// user's shell, not psm's. Raising only when needed keeps the cheap
/// `posix_spawn` path for the usual case. An infinite hard limit (macOS)
/// is not a number `setrlimit` takes for files: the soft limit is then
/// left alone.
pub fn make_room_for(services: usize) -> io::Result<Option<(u64, u64)>> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if !needs_more_files(services, soft) {
        return Ok(None);
    }
    let Some(target) = raised_soft_limit(soft, hard, RLIM_INFINITY) else {
        return Ok(None);
    };
    // Recorded first: a spawn that sees the raised limit must also see what
    // to give back.
    let _ = STARTED_WITH.set(soft);
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok(Some((soft, target)))
}

/// Whether a soft open-file limit of `soft` is too low for `services`:
/// each service may cost the coordinator two descriptors at once (a pidfd
/// watching an adopted or daemon-carried process, a probe's socket), the
/// control socket's connections may take a quarter of the limit
/// (`control::connection_cap`), and 64 are kept for the rest (logs being
/// opened, the registry, the runtime). Children the coordinator spawned
/// cost it none: one reaper waits for them all.
pub fn needs_more_files(services: usize, soft: u64) -> bool {
    let wanted = 2 * services as u64 + 64;
    wanted > soft - soft / 4
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
    /// Room is made only when the services could run short of files.
    #[test]
    fn more_files_only_when_the_services_need_them() {
        for (services, soft, want) in [
            (0, 1024, false),
            (100, 1024, false),
            (352, 1024, false), // 768 = 1024 - 256: just fits
            (353, 1024, true),
            (1000, 1024, true),
            (1000, 20_000, false),
            (5000, 20_000, false),
            (8000, 20_000, true),
            (1, 64, true), // 66 > 48
            (1, 256, false),
            (0, 0, true),
        ] {
            assert_eq!(needs_more_files(services, soft), want, "{services} {soft}");
        }
    }

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

    /// `exec`'s PATH search, done before `posix_spawn`: the first
    /// executable regular file, an empty entry meaning the working
    /// directory, EACCES when only unexecutable ones exist.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_path_search_finds_what_execvp_would() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let file = |p: &Path, mode| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        file(&a.join("tool"), 0o600); // not executable: skipped
        file(&b.join("tool"), 0o700);
        file(&a.join("only-plain"), 0o600);
        std::fs::create_dir(b.join("dir")).unwrap(); // a directory: skipped
        file(&b.join("here"), 0o700);
        let path = std::env::join_paths([&a, &b]).unwrap();
        let find = |program: &str, path: &std::ffi::OsStr, cwd: Option<&Path>| {
            linux::resolve(program.as_ref(), Some(path), cwd).map_err(|e| e.raw_os_error())
        };
        assert_eq!(find("tool", &path, None), Ok(b.join("tool")));
        assert_eq!(find("only-plain", &path, None), Err(Some(libc::EACCES)));
        assert_eq!(find("nope", &path, None), Err(Some(libc::ENOENT)));
        assert_eq!(find("dir", &path, None), Err(Some(libc::ENOENT)));
        assert_eq!(find("", &path, None), Err(Some(libc::ENOENT)));
        // A name with a slash is a path, relative to the child's directory.
        assert_eq!(find("./x/y", &path, None), Ok(PathBuf::from("./x/y")));
        // An empty entry (here the leading one) is the child's directory.
        let with_cwd = std::ffi::OsString::from(format!(":{}", a.display()));
        assert_eq!(find("here", &with_cwd, Some(&b)), Ok(b.join("./here")));
    }

    /// A service started by `posix_spawn` leads a new session, starts in
    /// its directory with its environment on top of psm's, reads /dev/null
    /// and writes to its log; a script without `#!` runs under /bin/sh, as
    /// `execvp` would run it.
    #[cfg(target_os = "linux")]
    #[test]
    fn posix_spawn_starts_a_detached_process() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("no-shebang");
        std::fs::write(
            &script,
            "echo \"pwd=$(pwd) foo=$FOO sid=$(cut -d' ' -f6 /proc/$$/stat) me=$$\"\ncat\necho done\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        let log = dir.path().join("logs/out.log");
        let spec = DetachedSpec {
            program: script.clone().into(),
            args: Vec::new(),
            cwd: Some(dir.path().to_path_buf()),
            env: vec![("FOO".into(), "bar".into())],
            log: log.clone(),
        };
        let pid =
            linux::posix_spawn_detached(&spec, None, &open_log(&log).unwrap().into()).unwrap();
        let mut status = 0;
        // SAFETY: waitpid only writes the status it is given.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(status, 0, "exit status");
        let out = std::fs::read_to_string(&log).unwrap();
        let want = format!(
            "pwd={} foo=bar sid={pid} me={pid}\ndone\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(out, want);
        let missing = DetachedSpec {
            program: "psm-no-such-program".into(),
            ..spec
        };
        let err = linux::posix_spawn_detached(&missing, None, &open_log(&log).unwrap().into())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
