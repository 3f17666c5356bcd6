//! Shared helpers for the black-box tests: a temp root, the real `psm`
//! binary, `sh` children that record what happened to them, deadline waits,
//! and a guard that kills every process group a test started.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PSM: &str = env!("CARGO_BIN_EXE_psm");

/// Polls `cond` every 20 ms until it holds or `limit` passes; on timeout
/// panics naming the condition and the last state `cond` reported.
pub fn wait_until<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<(), T>,
) {
    let deadline = Instant::now() + limit;
    loop {
        match cond() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => thread::sleep(Duration::from_millis(20)), // wait_until's poll
        }
    }
}

/// Shorthand for a boolean condition.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(limit, what, || if cond() { Ok(()) } else { Err("false") });
}

/// True while `pid` is a running, non-zombie process (through psm's own
/// per-OS process table reader, so the helpers work on Linux and macOS).
pub fn alive(pid: i32) -> bool {
    pid > 0 && psm::process::ProcInfo::read(pid).is_some_and(|info| !info.zombie)
}

/// Kills, on drop, every process group and pid it was told about, so a failing
/// test leaves nothing running. Each is remembered with its start time and
/// signalled only while that still matches: by the time a test ends, a number
/// it was told about may belong to another test's process (pids are reused,
/// and steered on purpose by the stranger tests). A group whose leader is
/// gone is left to `Root::kill_everything`, which finds psm's processes by
/// their environment.
#[derive(Default)]
pub struct Reaper {
    groups: Mutex<Vec<(i32, u64)>>,
    pids: Mutex<Vec<(i32, u64)>>,
}

impl Reaper {
    pub fn group(&self, pgid: i32) {
        assert!(pgid > 1, "refusing to track pgid {pgid}");
        if let Some(start) = start_time(pgid) {
            self.groups.lock().unwrap().push((pgid, start));
        }
    }

    pub fn pid(&self, pid: i32) {
        assert!(pid > 1, "refusing to track pid {pid}");
        if let Some(start) = start_time(pid) {
            self.pids.lock().unwrap().push((pid, start));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &(g, start) in self.groups.lock().unwrap().iter() {
            // A group id is never handed out again while any member lives:
            // with its leader gone (killed and reaped by a `Children` guard
            // first), what is left in group `g` is the group's own. Only a
            // new process on the leader's pid makes `g` somebody else's.
            if start_time(g).is_none_or(|now| now == start) {
                unsafe { libc::kill(-g, libc::SIGKILL) };
            }
        }
        for &(p, start) in self.pids.lock().unwrap().iter() {
            if start_time(p) == Some(start) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

/// A `sleep 1000` child standing in for a service.
pub struct Sleeper(std::process::Child);

impl Sleeper {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills and reaps it, so its pid is truly dead.
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temp psm root with the binary pointed at it.
pub struct Root {
    pub dir: tempfile::TempDir,
    /// The psm root: `dir` itself, or a deep directory inside it.
    root: PathBuf,
    pub reaper: Reaper,
}

impl Drop for Root {
    /// Kills whatever this root's coordinator and services are, so a failing
    /// test leaves nothing running: the coordinator first (so it restarts
    /// nothing), then every recorded service's process group.
    fn drop(&mut self) {
        self.kill_everything();
    }
}

impl Root {
    /// SIGKILLs the coordinator holding this root's lock and the process group
    /// of every process the registry records (identity checked).
    pub fn kill_everything(&self) {
        if let Some(pid) = self.coordinator_pid() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_for(Duration::from_secs(5), "coordinator gone", || !alive(pid));
        }
        for (pid, start) in self.recorded_processes() {
            if start_time(pid) == Some(start) {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // A service spawned in the moment before the coordinator died may not
        // be recorded yet; every service carries PSM_ROOT in its environment.
        let canonical = fs::canonicalize(self.path()).ok();
        let roots: Vec<&Path> = [Some(self.path()), canonical.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while kill_processes_naming(&roots) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20)); // poll, as wait_until does: children may still fork
        }
    }

    /// The pid written in the coordinator lock file, if that process is alive.
    pub fn coordinator_pid(&self) -> Option<i32> {
        // "<pid> <start time>" (the pid alone from an older psm).
        let text = self.read(".psm/coordinator.lock");
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        // The file keeps a dead coordinator's pid, and tests that steer pid
        // allocation hand such numbers to strangers: only a live `psm
        // coordinator` of this root is ours to name (and to SIGKILL on drop).
        (pid > 1 && alive(pid) && runs_coordinator_of(pid, self.path())).then_some(pid)
    }

    /// (pid, pidStartTime) of every service record with a process.
    pub fn recorded_processes(&self) -> Vec<(i32, u64)> {
        let Ok(text) = fs::read_to_string(self.registry_path()) else {
            return Vec::new();
        };
        let Ok(reg) = serde_json::from_str::<Value>(&text) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut visit = |r: &Value| {
            if let (Some(pid), Some(st)) = (r["pid"].as_i64(), r["pidStartTime"].as_u64()) {
                if pid > 1 && pid != std::process::id() as i64 {
                    out.push((pid as i32, st));
                }
            }
        };
        let services = &reg["services"];
        for r in services["global"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            visit(r);
        }
        for scope in ["projects", "sessions"] {
            for m in services[scope]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
            {
                for r in m.as_object().into_iter().flat_map(|m| m.values()) {
                    visit(r);
                }
            }
        }
        out
    }

    /// Writes `<root>/psm.toml`.
    pub fn write_config(&self, toml: &str) {
        fs::write(self.file("psm.toml"), toml).unwrap();
    }

    /// `psm up`, asserting success; returns the coordinator's pid.
    pub fn up(&self) -> i32 {
        self.ok(&["up"]);
        self.coordinator_pid().expect("a coordinator after psm up")
    }

    /// The registry record of a global service.
    pub fn global(&self, name: &str) -> Value {
        self.registry()["services"]["global"][name].clone()
    }

    /// The pid of a running global service, once it has one.
    pub fn service_pid(&self, name: &str) -> i32 {
        let mut pid = 0;
        wait_until(Duration::from_secs(10), &format!("{name} running"), || {
            let r = self.global(name);
            match (r["status"].as_str(), r["pid"].as_i64()) {
                (Some("running"), Some(p)) if alive(p as i32) => {
                    pid = p as i32;
                    Ok(())
                }
                _ => Err(r),
            }
        });
        pid
    }

    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp root");
        // psm canonicalises its root; so do the tests, or macOS's temp dir
        // (/var → /private/var) would name another path than psm's records,
        // environment markers and socket.
        let root = dir.path().canonicalize().expect("canonical temp root");
        Root {
            root,
            dir,
            reaper: Reaper::default(),
        }
    }

    /// A root at least `len` bytes long, nested inside a temp dir (deep
    /// agent workspaces, macOS `$TMPDIR`).
    pub fn deep(len: usize) -> Self {
        let mut root = Root::new();
        while root.root.as_os_str().len() < len {
            root.root.push("a-rather-long-directory-name");
        }
        fs::create_dir_all(&root.root).expect("deep root");
        root
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub fn registry_path(&self) -> PathBuf {
        self.file(".live-process-registry.json")
    }

    /// `psm --root <root> args…`, with a clean environment for the root.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(PSM);
        c.arg("--root")
            .arg(self.path())
            .env_remove("PSM_ROOT")
            .env_remove("CODING_REPO")
            .env_remove("PSM_SESSION_ID")
            .stdin(Stdio::null());
        #[cfg(target_os = "macos")]
        c.env("PATH", setsid_shim::path());
        c
    }

    pub fn psm(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run psm")
    }

    /// Runs psm and panics with its stderr unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.psm(args);
        assert!(
            out.status.success(),
            "psm {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn registry(&self) -> Value {
        let text = fs::read_to_string(self.registry_path()).unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).expect("registry parses")
    }

    pub fn registry_bytes(&self) -> Option<Vec<u8>> {
        fs::read(self.registry_path()).ok()
    }

    /// Writes an executable `sh` script into the root and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.file(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Starts a long-running process in its own group; killed and reaped on drop.
    pub fn sleeper(&self) -> Sleeper {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        Sleeper(child)
    }

    /// Reads a file the children write; empty if missing.
    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// Reads a pid a child wrote to `name`, once it is there.
    pub fn pid_from(&self, name: &str) -> i32 {
        let mut pid = 0;
        wait_until(
            Duration::from_secs(10),
            &format!("pid in {name}"),
            || match self.read(name).trim().parse::<i32>() {
                Ok(p) => {
                    pid = p;
                    Ok(())
                }
                Err(_) => Err(self.read(name)),
            },
        );
        pid
    }
}

/// SIGKILLs every live process whose environment has `PSM_ROOT=<one of
/// roots>`; returns how many it found.
fn kill_processes_naming(roots: &[&Path]) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let me = std::process::id() as i32;
    let mut found = 0;
    for pid in all_pids() {
        if pid <= 1 || pid == me {
            continue;
        }
        let names_root = env_var(pid, "PSM_ROOT")
            .is_some_and(|value| roots.iter().any(|r| r.as_os_str().as_bytes() == value));
        if names_root && alive(pid) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            found += 1;
        }
    }
    found
}

/// Whether `pid` runs `psm … coordinator` with `root` among its arguments.
pub fn runs_coordinator_of(pid: i32, root: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Some(args) = argv(pid) else {
        return false;
    };
    let canonical = fs::canonicalize(root).ok();
    let roots: Vec<&[u8]> = [Some(root), canonical.as_deref()]
        .into_iter()
        .flatten()
        .map(|r| r.as_os_str().as_bytes())
        .collect();
    args.iter().any(|a| a == b"coordinator") && args.iter().any(|a| roots.contains(&a.as_slice()))
}

/// Waits for `rounds` more coordinator heartbeats: the health rounds that
/// would have noticed an exit, or failed a probe, and restarted a service.
pub fn heartbeats(root: &Root, rounds: usize) {
    let beat = |r: &Root| r.global(psm::coordinator::COORDINATOR_NAME)["lastHealthCheck"].as_u64();
    for _ in 0..rounds {
        let first = beat(root);
        wait_until(Duration::from_secs(20), "a later heartbeat", || {
            if beat(root) > first {
                Ok(())
            } else {
                Err(first)
            }
        });
    }
}

/// The arguments of `pid` (`argv`, program first), for processes of this user.
#[cfg(target_os = "linux")]
pub fn argv(pid: i32) -> Option<Vec<Vec<u8>>> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args: Vec<Vec<u8>> = cmdline.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    // The block ends with a NUL, which leaves an empty last piece.
    if args.last().is_some_and(Vec::is_empty) {
        args.pop();
    }
    Some(args)
}

#[cfg(target_os = "macos")]
pub fn argv(pid: i32) -> Option<Vec<Vec<u8>>> {
    psm::process::macos::argv(pid)
}

/// The state letter of `pid` as `ps` shows it (R, S, T stopped, Z zombie).
#[cfg(target_os = "linux")]
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(target_os = "macos")]
pub fn state(pid: i32) -> Option<char> {
    psm::process::macos::state(pid)
}

/// The session id of `pid`.
pub fn session_of(pid: i32) -> Option<i32> {
    // SAFETY: a plain syscall; -1 means no such process.
    let sid = unsafe { libc::getsid(pid) };
    (sid >= 0).then_some(sid)
}

/// Every pid on the machine.
#[cfg(target_os = "linux")]
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(target_os = "macos")]
pub fn all_pids() -> Vec<i32> {
    psm::process::macos::all_pids()
}

/// The value of environment variable `name` in process `pid`.
#[cfg(target_os = "linux")]
pub fn env_var(pid: i32, name: &str) -> Option<Vec<u8>> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|var| {
        var.strip_prefix(name.as_bytes())?
            .strip_prefix(b"=")
            .map(<[u8]>::to_vec)
    })
}

#[cfg(target_os = "macos")]
pub fn env_var(pid: i32, name: &str) -> Option<Vec<u8>> {
    psm::process::macos::env_var(pid, name)
}

/// The kernel start time of `pid`, in psm's units (what `pidStartTime` holds).
pub fn start_time(pid: i32) -> Option<u64> {
    psm::process::ProcInfo::read(pid).map(|info| info.start_time)
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The coordinator's own record name in the registry.
pub const COORDINATOR: &str = "global-service-coordinator";

/// A health interval for configs in tests (heartbeat, sweep, probes).
pub const FAST: &str = "health-interval = \"100ms\"\n";

/// Child processes of a test, killed and reaped on drop so that nothing leaks
/// and no zombie is left, whatever the test's outcome.
#[derive(Default)]
pub struct Children(pub Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Root {
    /// `flock -x <lock> sleep 1000` in a process group of its own, which
    /// the root's reaper ends on drop: a stranger holding one of psm's
    /// locks. Returns the guard and the holder's pid (its group id).
    pub fn hold_lock(&self, lock: &Path) -> (Children, i32) {
        use std::os::unix::process::CommandExt;
        let holder = Children(vec![Command::new("flock")
            .arg("-x")
            .arg(lock)
            .args(["sleep", "1000"])
            .process_group(0)
            .spawn()
            .expect("flock(1)")]);
        let pid = holder.0[0].id() as i32;
        self.reaper.group(pid);
        (holder, pid)
    }
}

/// Waits for `child` to exit, failing after `limit`.
pub fn exit_of(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(limit, what, || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s);
            Ok(())
        }
        other => Err(format!("{other:?}")),
    });
    status.expect("set when wait_until returns")
}

/// Runs `cmd` to completion within `limit` (so a daemon that should have
/// refused to start cannot hang the test), capturing its output.
pub fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut guard = Children(vec![child]);
    exit_of(&mut guard.0[0], limit, what);
    let child = guard.0.pop().expect("pushed above");
    child.wait_with_output().expect("collect output")
}

/// The non-empty lines of a file under the root.
pub fn lines(root: &Root, name: &str) -> Vec<String> {
    root.read(name)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A record's pid.
pub fn pid_of(record: &Value) -> Option<i32> {
    record["pid"].as_i64().map(|p| p as i32)
}

pub fn sigkill(pid: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A loopback port nothing listens on (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A per-session service that starts a grandchild and records both pids.
pub fn service_script(root: &Root) -> std::path::PathBuf {
    root.script(
        "svc.sh",
        r#"name="$1"
sleep 1000 &
echo $! > "$PSM_TEST_DIR/$name.grandchild"
echo $$ > "$PSM_TEST_DIR/$name.pid"
wait"#,
    )
}

/// The session's command: spawns two services, waits until both have started
/// their grandchildren, then runs `$1` (exit, or keep running).
pub fn session_command(root: &Root, tail: &str) -> std::path::PathBuf {
    let svc = service_script(root);
    root.script(
        "session.sh",
        &format!(
            r#"set -e
"$PSM_BIN" session spawn alpha -- sh {svc} alpha > /dev/null
"$PSM_BIN" session spawn beta -- sh {svc} beta > /dev/null
for f in alpha.grandchild beta.grandchild alpha.pid beta.pid; do
  while [ ! -s "$PSM_TEST_DIR/$f" ]; do sleep 0.02; done
done
echo "$PSM_SESSION_ID" > "$PSM_TEST_DIR/session.id"
{tail}"#,
            svc = svc.display()
        ),
    )
}

/// The kernel's "last pid handed out", which the stranger tests write to
/// hand a chosen pid to the next fork (root only).
#[cfg(target_os = "linux")]
pub const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// Exclusive use of [`NS_LAST_PID`] for as long as the returned file is
/// open: an `flock` on that file itself, so every test process on the
/// machine (other binaries, other worktrees) takes turns; two steering at
/// once take each other's numbers. With `wait`, blocks until it is free;
/// else `None` when someone else steers. `None` too without a writable file.
#[cfg(target_os = "linux")]
pub fn steer_pids(wait: bool) -> Option<fs::File> {
    let file = fs::OpenOptions::new().write(true).open(NS_LAST_PID).ok()?;
    let locked = if wait {
        fs2::FileExt::lock_exclusive(&file)
    } else {
        fs2::FileExt::try_lock_exclusive(&file)
    };
    locked.ok().map(|()| file)
}

/// macOS has no `setsid(1)`, which test services use to leave their group:
/// a shim (Perl's `POSIX::setsid`, then `exec`, as util-linux does) goes
/// first on the `PATH` of every psm the helpers run, so the services they
/// start find it.
#[cfg(target_os = "macos")]
mod setsid_shim {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    const SHIM: &str = r#"#!/usr/bin/perl
# setsid(1) for the tests on macOS: a new session (forking first when the
# caller leads its group, as util-linux does), then exec.
use POSIX ();
if (!defined POSIX::setsid()) {
    exit 0 if fork();
    defined POSIX::setsid() or die "setsid: $!\n";
}
exec { $ARGV[0] } @ARGV or die "setsid: $ARGV[0]: $!\n";
"#;

    /// `PATH` with the shim's directory first. The directory lives as
    /// long as the test process (a static is never dropped): one small
    /// temp dir per test binary.
    pub fn path() -> std::ffi::OsString {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        let dir = DIR.get_or_init(|| {
            let dir = tempfile::tempdir().expect("shim dir").keep();
            let shim = dir.join("setsid");
            std::fs::write(&shim, SHIM).expect("write the setsid shim");
            std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))
                .expect("shim mode");
            dir
        });
        let rest = std::env::var_os("PATH").unwrap_or_default();
        std::env::join_paths(std::iter::once(dir.clone()).chain(std::env::split_paths(&rest)))
            .expect("PATH")
    }
}
