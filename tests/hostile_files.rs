//! psm never touches what is not its own and never hangs on a special file:
//! links, FIFOs and directories planted where its files belong are refused
//! with one line, and whatever a link points to stays byte for byte as it was.

mod support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::{output_within, stderr, wait_for, wait_until, Root, FAST};

/// How long a refused command may take: far beyond a refusal, far below a hang.
const BOUND: Duration = Duration::from_secs(20);

/// A file outside the root whose bytes and mode must survive.
struct Precious {
    dir: tempfile::TempDir,
    path: PathBuf,
}

const BYTES: &[u8] = b"precious bytes outside the root\n";

impl Precious {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("precious.txt");
        fs::write(&path, BYTES).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Precious { dir, path }
    }

    fn assert_intact(&self) {
        assert_eq!(fs::read(&self.path).unwrap(), BYTES, "the target changed");
        let mode = fs::metadata(&self.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the target's mode changed");
        let dir_mode = fs::metadata(self.dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o755, "the target's directory mode changed");
    }
}

/// Removes a planted special file before the root's clean-up (declared after
/// the root, so dropped first), even when the test fails: that clean-up
/// reads the registry, and a FIFO would hang it.
struct Unplant(PathBuf);

impl Drop for Unplant {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0).or_else(|_| fs::remove_dir(&self.0));
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Registers a live session `id` (this test process) so that services may be
/// spawned under it.
fn register_session(root: &Root, id: &str) {
    let me = std::process::id().to_string();
    let project = root.path().to_string_lossy().into_owned();
    let out = run(root, &["session", "register", id, &me, &project]);
    assert!(out.status.success(), "session register: {}", stderr(&out));
}

/// Runs `psm args…` in `root` within [`BOUND`].
fn run(root: &Root, args: &[&str]) -> Output {
    let mut cmd = root.cmd();
    cmd.args(args).env("PSM_LOCK_TIMEOUT", "1s");
    output_within(cmd, BOUND, &format!("psm {args:?} to finish"))
}

/// Asserts a failure: non-zero exit and exactly one stderr line saying `says`.
fn fails_with_one_line(out: &Output, args: &str, says: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "psm {args} succeeded: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "psm {args} must say one line: {err}"
    );
    assert!(
        err.contains(says),
        "psm {args}: expected '{says}' in: {err}"
    );
}

/// A registry temp-file name planted as a link: a save never writes through it.
#[test]
fn planted_registry_temp_link_is_never_written_through() {
    let root = Root::new();
    let target = Precious::new();
    symlink(&target.path, root.file(".live-process-registry.json.tmp")).unwrap();
    let child = root.sleeper();
    root.ok(&["register", "web", &child.id().to_string(), "global", "w"]);
    target.assert_intact();
    assert_eq!(
        root.global("web")["pid"].as_u64(),
        Some(u64::from(child.id()))
    );
}

/// A dangling lock-file link: `status` refuses it and creates nothing.
#[test]
fn dangling_lock_link_is_refused_and_not_created() {
    let root = Root::new();
    let outside = tempfile::tempdir().unwrap();
    let nowhere = outside.path().join("created-by-psm");
    symlink(&nowhere, root.file(".live-process-registry.json.lock")).unwrap();
    for args in [&["status"][..], &["cleanup"], &["get", "web", "global"]] {
        let out = run(&root, args);
        fails_with_one_line(&out, &format!("{args:?}"), "is a symbolic link");
        assert!(!nowhere.exists(), "psm {args:?} created the link's target");
    }
    assert!(root.registry_bytes().is_none());
}

/// A `.psm` that is a link to a directory elsewhere: the coordinator refuses
/// it; the directory keeps its mode, its socket file and its lock file.
#[test]
fn runtime_dir_link_is_refused() {
    let root = Root::new();
    let target = Precious::new();
    let sock = target.dir.path().join("coordinator.sock");
    let lock = target.dir.path().join("coordinator.lock");
    fs::write(&sock, b"not ours").unwrap();
    fs::write(&lock, b"not ours either").unwrap();
    symlink(target.dir.path(), root.file(".psm")).unwrap();
    let out = run(&root, &["coordinator"]);
    fails_with_one_line(&out, "coordinator", ".psm is a symbolic link");
    target.assert_intact();
    assert_eq!(fs::read(&sock).unwrap(), b"not ours");
    assert_eq!(fs::read(&lock).unwrap(), b"not ours either");
}

/// A `.logs` link, or a log file that is a link or a FIFO: a session service
/// is refused with one line and nothing is written outside the root.
#[test]
fn log_links_and_fifos_are_refused() {
    let root = Root::new();
    let target = Precious::new();
    // `session spawn` needs a live session before it opens any log.
    let shell = root.sleeper();
    let shell_pid = shell.id().to_string();
    let register = |r: &Root| {
        r.ok(&[
            "session",
            "register",
            "s1",
            &shell_pid,
            &r.path().display().to_string(),
        ]);
    };
    register(&root);
    fs::create_dir(root.file(".logs")).unwrap();
    symlink(&target.path, root.file(".logs/s1.web.log")).unwrap();
    mkfifo(&root.file(".logs/s1.fifo.log"));
    register_session(&root, "s1");
    let args = ["session", "spawn", "--session", "s1"];
    for (name, says) in [("web", "is a symbolic link"), ("fifo", "is a FIFO")] {
        let mut all = args.to_vec();
        all.extend([name, "--", "sleep", "1000"]);
        let out = run(&root, &all);
        fails_with_one_line(&out, name, says);
        // `psm logs` reads neither the link's target nor the FIFO.
        for follow in [&[][..], &["-f"]] {
            let mut logs = vec!["logs", if name == "web" { "s1.web" } else { "s1.fifo" }];
            logs.extend(follow);
            let out = run(&root, &logs);
            fails_with_one_line(&out, &format!("{logs:?}"), says);
        }
    }
    target.assert_intact();

    let other = Root::new();
    register(&other);
    symlink(target.dir.path(), other.file(".logs")).unwrap();
    register_session(&other, "s1");
    let out = run(
        &other,
        &["session", "spawn", "--session", "s1", "web", "--", "true"],
    );
    fails_with_one_line(&out, "spawn with .logs a link", ".logs is a symbolic link");
    assert_eq!(fs::read_dir(target.dir.path()).unwrap().count(), 1);
    target.assert_intact();
    assert!(
        root.registry_bytes().is_none()
            || root.registry()["services"]["sessions"]
                .as_object()
                .is_none_or(|m| m.is_empty())
    );
}

/// Rotation over planted `.log.1` / `.log.2` links replaces the links and
/// never truncates, overwrites or chmods their targets; a service whose log
/// itself is a link is not started and the coordinator says why.
#[test]
fn rotation_never_writes_through_links() {
    let root = Root::new();
    let one = Precious::new();
    let two = Precious::new();
    let three = Precious::new();
    fs::create_dir(root.file(".logs")).unwrap();
    symlink(&one.path, root.file(".logs/chatty.log.1")).unwrap();
    symlink(&two.path, root.file(".logs/chatty.log.2")).unwrap();
    symlink(&three.path, root.file(".logs/linked.log")).unwrap();
    root.write_config(&format!(
        "{FAST}[logs]\nmax-size = 1000\nkeep = 2\n\n\
         [[service]]\nname = \"chatty\"\ntype = \"global\"\ncommand = [\"sh\", \"-c\", \"while :; do echo 0123456789012345678901234567890123456789; sleep 0.005; done\"]\n\n\
         [[service]]\nname = \"linked\"\ntype = \"global\"\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    root.up();
    // Two rotations: `.1` (a link) moved to `.2`, then replaced by a copy.
    wait_for(Duration::from_secs(20), "two rotations of chatty", || {
        let regular = |p: PathBuf| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        regular(root.file(".logs/chatty.log.1")) && regular(root.file(".logs/chatty.log.2"))
    });
    wait_for(
        Duration::from_secs(20),
        "the refusal of linked.log logged",
        || {
            root.read(".logs/coordinator.log")
                .contains("linked.log is a symbolic link")
        },
    );
    one.assert_intact();
    two.assert_intact();
    three.assert_intact();
    assert!(fs::symlink_metadata(root.file(".logs/linked.log"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A registry that is a FIFO, a directory or a socket: `status`, `register`,
/// `cleanup`, `up`, `verify` and `watchdog` end at once with one line, no
/// coordinator is left running on it, and the file stays.
#[test]
fn special_registry_never_hangs() {
    for kind in ["FIFO", "directory", "socket"] {
        let root = Root::new();
        let registry = root.registry_path();
        let _unplant = Unplant(registry.clone());
        let _listener = match kind {
            "FIFO" => {
                mkfifo(&registry);
                None
            }
            "directory" => {
                fs::create_dir(&registry).unwrap();
                None
            }
            _ => Some(std::os::unix::net::UnixListener::bind(&registry).unwrap()),
        };
        let child = root.sleeper();
        let pid = child.id().to_string();
        for args in [
            &["status"][..],
            &["register", "web", &pid, "global", "w"],
            &["cleanup"],
            &["up"],
        ] {
            let out = run(&root, args);
            fails_with_one_line(&out, &format!("{kind} {args:?}"), &format!("is a {kind}"));
        }
        // `up` left no coordinator running blind on it.
        assert!(
            root.coordinator_pid().is_none(),
            "{kind}: a coordinator runs"
        );
        for args in [&["verify"][..], &["watchdog"]] {
            let out = run(&root, args);
            assert!(!out.status.success(), "{kind} {args:?}");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            assert!(
                text.contains(&format!("is a {kind}")),
                "{kind} {args:?}: {text}"
            );
        }
        if kind == "FIFO" {
            assert!(is_fifo(&registry));
        }
    }
}

/// A FIFO psm.toml: `up` and `verify` end at once with one line, and `reload`
/// fails without stopping a running coordinator's supervision.
#[test]
fn fifo_config_never_hangs_and_reload_keeps_supervising() {
    let root = Root::new();
    let config = root.file("psm.toml");
    mkfifo(&config);
    let out = run(&root, &["up"]);
    fails_with_one_line(&out, "up", "is a FIFO");
    assert!(root.coordinator_pid().is_none());
    let out = run(&root, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && text.contains("is a FIFO"),
        "{text}"
    );

    fs::remove_file(&config).unwrap();
    root.write_config(&format!(
        "{FAST}[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    root.up();
    let first = root.service_pid("web");
    fs::remove_file(&config).unwrap();
    mkfifo(&config);
    let out = run(&root, &["reload"]);
    fails_with_one_line(&out, "reload", "is a FIFO");
    // Still supervising: a killed service is started again.
    support::sigkill(first);
    wait_until(Duration::from_secs(20), "web restarted", || {
        let r = root.global("web");
        match support::pid_of(&r) {
            Some(p) if p != first && support::alive(p) => Ok(()),
            _ => Err(r),
        }
    });
}

/// A stopped process holding the registry lock: every command ends within
/// its deadline with one line naming that process. Linux: the holder is
/// named from /proc/locks, and flock(1) is util-linux's.
#[cfg(target_os = "linux")]
#[test]
fn lock_wait_has_a_deadline_naming_the_holder() {
    let root = Root::new();
    root.ok(&["status"]); // creates the lock file
    let lock = root.file(".live-process-registry.json.lock");
    let (_holder, pid) = root.hold_lock(&lock);
    let named = format!("held by pid {pid}");
    wait_until(Duration::from_secs(10), "flock(1) holding the lock", || {
        let mut cmd = root.cmd();
        cmd.arg("status").env("PSM_LOCK_TIMEOUT", "50ms");
        let out = output_within(cmd, BOUND, "status");
        let err = stderr(&out);
        if err.contains(&named) {
            Ok(())
        } else {
            Err(err)
        }
    });
    unsafe { libc::kill(-pid, libc::SIGSTOP) };
    let sleeper = root.sleeper();
    let spid = sleeper.id().to_string();
    for args in [
        &["status"][..],
        &["get", "web", "global"],
        &["cleanup"],
        &["register", "web", &spid, "global", "w"],
        &["stop", "web"],
        &["session", "cleanup", "s1"],
    ] {
        let out = run(&root, args);
        fails_with_one_line(&out, &format!("{args:?}"), &named);
    }
    assert!(root.registry_bytes().is_none());
}

/// The longest names allowed (128-character service name with a
/// 128-character project or session) start, log, and `psm logs` reads them.
#[test]
fn longest_names_start_and_log() {
    let root = Root::new();
    let name = format!("n{}", "x".repeat(127));
    let project = root.path().canonicalize().unwrap().join("p".repeat(128));
    fs::create_dir(&project).unwrap();
    root.write_config(&format!(
        "{FAST}projects = [\"{}\"]\n\n[[service]]\nname = \"{name}\"\ntype = \"per-project\"\n\
         command = [\"sh\", \"-c\", \"echo hello from the long one; exec sleep 1000\"]\n",
        project.display()
    ));
    root.up();
    let project_arg = project.display().to_string();
    wait_until(Duration::from_secs(20), "the long service's log", || {
        let out = run(
            &root,
            &["logs", &name, "--project", &project_arg, "-n", "5"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("hello from the long one") {
            Ok(())
        } else {
            Err(format!("{text}{}", stderr(&out)))
        }
    });

    let session = format!("s{}", "y".repeat(127));
    let sleeper = root.sleeper();
    root.ok(&[
        "session",
        "register",
        &session,
        &sleeper.id().to_string(),
        &project_arg,
    ]);
    let spawned = root.ok(&[
        "session",
        "spawn",
        "--session",
        &session,
        &name,
        "--",
        "sh",
        "-c",
        "echo hello from the session; exec sleep 1000",
    ]);
    let pid: i32 = spawned.trim().parse().unwrap();
    root.reaper.group(pid);
    wait_for(Duration::from_secs(20), "the session service's log", || {
        fs::read_dir(root.file(".logs"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name().to_string_lossy().starts_with(&session[..100])
                    && fs::read_to_string(e.path())
                        .is_ok_and(|t| t.contains("hello from the session"))
            })
    });
}

/// `psm logs -n 10` of a 2 GB log without a newline reads a bounded tail:
/// it succeeds under a 512 MB address-space limit.
#[test]
fn tail_of_a_huge_log_without_newline_is_bounded() {
    let root = Root::new();
    fs::create_dir(root.file(".logs")).unwrap();
    // Sparse: 2 GB of zeros (no newline anywhere) made at once.
    let log = fs::File::create(root.file(".logs/huge.log")).unwrap();
    log.set_len(2 << 30).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 524288 && exec \"$0\" \"$@\"")
        .arg(support::PSM)
        .arg("--root")
        .arg(root.path())
        .args(["logs", "huge", "-n", "10"]);
    // Into a file: the output (a 4 MiB line) would fill a pipe nobody reads
    // until the command exits.
    let shown = root.file("shown");
    cmd.stdout(fs::File::create(&shown).unwrap())
        .stderr(fs::File::create(root.file("errors")).unwrap());
    let mut child = support::Children(vec![cmd.spawn().unwrap()]);
    let status = support::exit_of(&mut child.0[0], BOUND, "psm logs of a 2 GB log");
    assert!(status.success(), "{}", root.read("errors"));
    let len = fs::metadata(&shown).unwrap().len();
    assert!(len > 0 && len <= 5 << 20, "{len} bytes");
}

/// A service writing about 50 MB/s keeps its log files within a small
/// multiple of max-size × (keep + 1), long before a health tick comes.
#[test]
fn a_fast_writer_stays_within_its_log_budget() {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let root = Root::new();
    const MAX: u64 = 4 << 20;
    root.write_config(&format!(
        "health-interval = \"10s\"\n[logs]\nmax-size = {MAX}\nkeep = 1\n\n\
         [[service]]\nname = \"firehose\"\ntype = \"global\"\n\
         command = [\"sh\", \"-c\", \"while :; do head -c 524288 /dev/zero; sleep 0.01; done\"]\n"
    ));
    root.up();
    let budget = 8 * MAX * 2;
    let (log, copy) = (
        root.file(".logs/firehose.log"),
        root.file(".logs/firehose.log.1"),
    );
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let mut copies = HashSet::new();
    let mut peak = 0;
    wait_until(Duration::from_secs(60), "10 rotations of firehose", || {
        let total = size(&log) + size(&copy);
        peak = peak.max(total);
        assert!(total <= budget, "logs at {total} bytes, budget {budget}");
        if let Ok(m) = fs::metadata(&copy) {
            copies.insert(m.ino());
        }
        if copies.len() >= 10 {
            Ok(())
        } else {
            Err(format!("{} rotations, peak {peak} bytes", copies.len()))
        }
    });
}

/// A registry corrupted under a running coordinator is copied aside once
/// per distinct content, however many rounds try to write it.
#[test]
fn corrupt_registry_under_a_coordinator_is_copied_once_per_content() {
    let root = Root::new();
    root.write_config(FAST);
    root.up();
    let copies = || {
        fs::read_dir(root.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count()
    };
    let failures = || {
        root.read(".logs/coordinator.log")
            .matches("registry write failed")
            .count()
    };
    for (round, garbage) in [&b"{ not json"[..], b"{ other garbage"].iter().enumerate() {
        let before = failures();
        // Renamed into place: a truncate-then-write would let a round read
        // the empty file in between, a third distinct content.
        let staged = root.file("garbage.tmp");
        fs::write(&staged, garbage).unwrap();
        fs::rename(&staged, root.registry_path()).unwrap();
        // Ten failed heartbeat writes: ten rounds that each found it corrupt.
        wait_for(Duration::from_secs(30), "ten failed writes", || {
            failures() >= before + 10
        });
        assert_eq!(copies(), round + 1, "copies after round {round}");
    }
    // A readable registry again, so the root's clean-up finds the coordinator.
    fs::remove_file(root.registry_path()).unwrap();
}

/// The seed's proper-lockfile lock directory is named for what it is;
/// `verify` reports it, and `verify --fix` removes it only when it is stale
/// (10 s) and no `process-state-manager` node process runs; the seed's
/// registry then reads.
#[test]
fn seed_lock_directory_is_recognised_and_removed_when_stale() {
    let root = Root::new();
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seed-registry.json");
    fs::copy(&seed, root.registry_path()).unwrap();
    let lock = root.file(".live-process-registry.json.lock");
    fs::create_dir(&lock).unwrap();
    let age = |secs: u64| {
        let then = std::time::SystemTime::now() - Duration::from_secs(secs);
        fs::File::open(&lock).unwrap().set_modified(then).unwrap();
    };

    let out = run(&root, &["status"]);
    fails_with_one_line(&out, "status", "lock directory of the JavaScript PSM");
    let out = run(&root, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && text.contains("seed lock"),
        "{text}"
    );

    // Fresh: it may be in use.
    let out = run(&root, &["verify", "--fix"]);
    fails_with_one_line(&out, "verify --fix (fresh)", "may be in use");
    assert!(lock.is_dir());

    // Stale, but the seed's PSM runs.
    age(60);
    let node = Command::new("sh")
        .arg0("node")
        .args(["-c", "sleep 1000; exit", "scripts/process-state-manager.js"])
        .process_group(0)
        .spawn()
        .unwrap();
    let mut node = support::Children(vec![node]);
    root.reaper.group(node.0[0].id() as i32);
    let out = run(&root, &["verify", "--fix"]);
    fails_with_one_line(
        &out,
        "verify --fix (seed running)",
        "node process is running",
    );
    assert!(lock.is_dir());

    // Stale and nobody runs it: removed, and the seed's registry reads (and
    // --fix goes on to its other repairs: the seed's dead records).
    node.0[0].kill().unwrap();
    node.0[0].wait().unwrap();
    let out = run(&root, &["verify", "--fix"]);
    assert!(stderr(&out).contains("removed the seed's stale lock directory"));
    assert!(!lock.is_dir(), "the stale lock directory is still there");
    root.ok(&["status"]);
    assert_eq!(root.registry()["version"], "3.0.0");
}
