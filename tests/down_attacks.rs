//! Attacks on "down stays down" and the watchdog's ping, through the real
//! binary: odd files where the down mark and the coordinator lock go, a
//! coordinator that crashed before `down`, a stranger named in the lock file,
//! an impostor answering on the control socket, and a root at the socket
//! path length edge.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::{alive, output_within, sigkill, stderr, wait_for, Root, COORDINATOR, FAST};

/// Generous on a loaded 2-core machine; the product needs a fraction of it.
const LIMIT: Duration = Duration::from_secs(15);
/// A watchdog run may wait 2 s for a lock, 2 s for a kill, 10 s for a heartbeat.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(30);

fn run(root: &Root, args: &[&str], limit: Duration) -> Output {
    let mut cmd = root.cmd();
    cmd.args(args);
    output_within(cmd, limit, &format!("psm {args:?} to exit"))
}

fn mkfifo(path: &std::path::Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

fn runtime_dir(root: &Root) {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(root.file(".psm"))
        .expect(".psm");
}

/// A FIFO at `.psm/down` (or a symlink to one) hangs nothing: the watchdog
/// reports `stopped`, `coordinator --respect-down` starts nothing, and `psm
/// up` replaces it; a FIFO at `.psm/coordinator.lock` does not hang `psm
/// down` (no coordinator is running) nor the watchdog.
#[test]
fn fifos_at_the_mark_and_the_lock_hang_nothing() {
    let root = Root::new();
    root.write_config(FAST);
    runtime_dir(&root);
    mkfifo(&root.file(".psm/down"));
    let out = run(&root, &["watchdog"], WATCHDOG_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.starts_with("stopped: "), "{said}");
    let out = run(&root, &["coordinator", "--respect-down"], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not starting"), "{}", stderr(&out));

    fs::remove_file(root.file(".psm/down")).unwrap();
    let elsewhere = root.file("fifo");
    mkfifo(&elsewhere);
    std::os::unix::fs::symlink(&elsewhere, root.file(".psm/down")).unwrap();
    let out = run(&root, &["watchdog"], WATCHDOG_LIMIT);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("stopped: "),
        "{out:?}"
    );
    let out = run(&root, &["up"], LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.file(".psm/down").exists(), "up cleared the mark");
    let out = run(&root, &["down"], LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));

    let other = Root::new();
    other.write_config(FAST);
    runtime_dir(&other);
    mkfifo(&other.file(".psm/coordinator.lock"));
    let down = run(&other, &["down"], LIMIT);
    run(&other, &["watchdog"], WATCHDOG_LIMIT);
    // Before any assertion: the support helpers read the lock file (and
    // would block on the FIFO when the root is dropped).
    fs::remove_file(other.file(".psm/coordinator.lock")).unwrap();
    assert_eq!(down.status.code(), Some(1), "{}", stderr(&down));
    assert!(
        stderr(&down).contains("no coordinator is running"),
        "{}",
        stderr(&down)
    );
    assert!(
        !other.file(".psm/down").exists(),
        "a failed down changed nothing"
    );
}

/// `psm down` after the coordinator crashed (SIGKILL) while its service ran
/// is still a decision: exit 0, the service is stopped, the records are
/// gone, the mark is left, and the watchdog then starts nothing (verdict
/// `stopped`) instead of a coordinator that adopts the service again.
#[test]
fn down_after_a_crash_stops_what_the_coordinator_left_and_stays_down() {
    let root = Root::new();
    root.script("svc.sh", "echo $$ >> \"$PSM_ROOT/runs\"\nexec sleep 1000");
    root.write_config(&format!(
        "{FAST}\n[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sh\", \"svc.sh\"]\n"
    ));
    let coordinator = root.up();
    let service = root.service_pid("svc");
    root.reaper.group(service);
    sigkill(coordinator);
    wait_for(LIMIT, "coordinator gone", || !alive(coordinator));
    assert!(alive(service), "the service outlives its coordinator");

    let out = run(&root, &["down"], LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(LIMIT, "svc stopped by down", || !alive(service));
    assert!(root.file(".psm/down").exists(), "the down mark");
    let reg = root.registry();
    assert!(
        reg["services"]["global"]
            .as_object()
            .is_none_or(|g| g.is_empty()),
        "records left after down: {reg}"
    );
    let out = run(&root, &["watchdog"], WATCHDOG_LIMIT);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.starts_with("stopped: "), "{said} {}", stderr(&out));
    assert_eq!(root.coordinator_pid(), None, "the watchdog started one");
    assert_eq!(support::lines(&root, "runs").len(), 1, "svc ran again");
}

/// A lock held by someone whose file names a live stranger (what a
/// coordinator that has just taken the lock, before writing its pid, shows
/// when its dead predecessor's pid was reused) is not "the coordinator": when
/// it does not exit, `down` refuses to SIGKILL it, says why, and the stranger
/// lives.
#[test]
fn down_never_sigkills_a_stranger_named_in_the_lock_file() {
    let root = Root::new();
    runtime_dir(&root);
    let mut stranger = root.sleeper();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.file(".psm/coordinator.lock"))
        .unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    write!(&lock, "{}", stranger.id()).unwrap();

    // No config: the deadline is the 10 s slack.
    let out = run(&root, &["down"], Duration::from_secs(40));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("not signalling"), "{err}");
    assert!(alive(stranger.id() as i32), "down killed a stranger");
    drop(lock);
    stranger.stop();
}

/// A hung (SIGSTOPped) coordinator whose record is gone, with something else
/// answering on its socket path, is not "answering": the watchdog checks the
/// pid in the reply against the lock holder, kills the hung one and starts a
/// new coordinator, instead of leaving it alone.
#[test]
fn an_impostor_on_the_socket_does_not_vouch_for_a_hung_coordinator() {
    let root = Root::new();
    root.write_config(FAST);
    let coordinator = root.up();
    root.reaper.pid(coordinator);
    // The record goes, under the registry lock as every writer takes it.
    {
        let lock = fs::File::open(root.file(".live-process-registry.json.lock")).unwrap();
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // Stopped while we hold the lock, so it cannot be holding it: one
        // stopped mid-write would keep our flock waiting forever (seen
        // under load).
        unsafe { libc::kill(coordinator, libc::SIGSTOP) };
        let mut reg = root.registry();
        reg["services"]["global"]
            .as_object_mut()
            .unwrap()
            .remove(COORDINATOR);
        let tmp = root.file("registry.test-tmp");
        fs::write(&tmp, serde_json::to_vec(&reg).unwrap()).unwrap();
        fs::rename(&tmp, root.registry_path()).unwrap();
    }
    let socket = root.file(".psm/coordinator.sock");
    fs::remove_file(&socket).unwrap();
    let impostor = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in impostor.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ =
                (&stream).write_all(b"{\"ok\":true,\"message\":\"pong\",\"data\":{\"pid\":1}}\n");
        }
    });

    let out = run(&root, &["watchdog", "--json"], WATCHDOG_LIMIT);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("json verdict: {e}: {out:?}"));
    assert!(
        !alive(coordinator),
        "the hung coordinator was left alone: {report}"
    );
    assert_eq!(report["ok"], true, "{report}");
    let next = root.coordinator_pid().expect("a new coordinator");
    assert_ne!(next, coordinator);
}

/// The socket path's edge: a root whose `.psm/coordinator.sock` is exactly
/// 107 bytes keeps its socket there (the kernel takes 107 + NUL), one byte
/// more moves it to the per-user runtime directory; `up`, `status` and `down`
/// work either way.
#[test]
fn a_root_at_the_socket_length_edge_works_on_both_sides() {
    #[cfg(target_os = "macos")]
    const EDGE: usize = 103;
    #[cfg(not(target_os = "macos"))]
    const EDGE: usize = 107;
    let base = Root::new();
    for len in [EDGE, EDGE + 1] {
        let pad = len - "/.psm/coordinator.sock".len() - base.path().as_os_str().len() - 1;
        let root = base.path().join("x".repeat(pad));
        fs::create_dir(&root).unwrap();
        fs::write(root.join("psm.toml"), FAST).unwrap();
        let psm = |args: &[&str], limit| {
            let mut cmd = std::process::Command::new(support::PSM);
            cmd.arg("--root").arg(&root).args(args);
            output_within(cmd, limit, &format!("psm {args:?} at {len} bytes"))
        };
        let up = psm(&["up"], LIMIT);
        if let Ok(pid) = fs::read_to_string(root.join(".psm/coordinator.lock")) {
            // "<pid> <start time>": the pid is the first word.
            if let Some(Ok(pid)) = pid.split_whitespace().next().map(str::parse::<i32>) {
                base.reaper.pid(pid);
            }
        }
        assert!(up.status.success(), "{len}: {}", stderr(&up));
        let under_root = root.join(".psm/coordinator.sock");
        assert_eq!(under_root.as_os_str().len(), len);
        assert_eq!(under_root.exists(), len == EDGE, "{len}");
        assert!(psm(&["status"], LIMIT).status.success(), "{len}");
        let down = psm(&["down"], LIMIT);
        assert!(down.status.success(), "{len}: {}", stderr(&down));
    }
}
