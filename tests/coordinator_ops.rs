//! The coordinator in operation: one per root however many start at once,
//! adoption after a crash without duplicates, the session sweep, per-project
//! instances, the control socket's uid check, config errors, and the control
//! commands' answers with and without a coordinator.

mod support;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::{
    alive, exit_of, lines, output_within, pid_of, sigkill, stderr, wait_for, wait_until, Children,
    Root, COORDINATOR, FAST, PSM,
};

/// Generous on a loaded 2-core machine; the product needs a fraction of it.
const LIMIT: Duration = Duration::from_secs(15);

/// stderr, asserted to be exactly one line; returned without its newline.
fn one_line(out: &Output, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        err.lines().count(),
        1,
        "{what} must say one line, said: {err:?}"
    );
    assert!(err.starts_with("psm: "), "{what}: {err:?}");
    err.trim_end().to_string()
}

/// The record of a per-project instance (Null when there is none).
fn project_record(root: &Root, project: &Path, name: &str) -> Value {
    root.registry()["services"]["projects"][project.to_string_lossy().as_ref()][name].clone()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------
// 1. One coordinator per root.

/// What a race of ten `psm coordinator` on one root left: the survivor's pid
/// and, for each of the other nine, its exit status and stderr. The survivor
/// is in `_children`, held only to be killed and reaped on drop.
struct Race {
    survivor: i32,
    losers: Vec<(ExitStatus, String)>,
    _children: Children,
}

/// Starts ten `psm coordinator` without waiting between them and waits until
/// nine have exited; asserts the tenth is the serving lock holder.
fn race_ten(root: &Root, round: usize) -> Race {
    let mut children = Children::default();
    for i in 0..10 {
        let err = File::create(root.file(&format!("coordinator-{round}-{i}.err"))).unwrap();
        let child = root
            .cmd()
            .arg("coordinator")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn psm coordinator");
        children.0.push(child);
    }
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; 10];
    wait_until(LIMIT, "nine of ten coordinators to exit", || {
        for (child, status) in children.0.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().expect("try_wait");
            }
        }
        let exited = statuses.iter().filter(|s| s.is_some()).count();
        if exited >= 9 {
            Ok(())
        } else {
            Err(statuses.clone())
        }
    });
    let running: Vec<usize> = (0..10).filter(|&i| statuses[i].is_none()).collect();
    assert_eq!(
        running.len(),
        1,
        "exactly one must keep running: {statuses:?}"
    );
    let survivor = children.0[running[0]].id() as i32;
    assert!(alive(survivor));
    assert_eq!(
        root.coordinator_pid(),
        Some(survivor),
        "the survivor holds the lock"
    );
    // It is serving, not merely alive.
    root.ok(&["reload"]);
    let losers = (0..10)
        .filter(|&i| i != running[0])
        .map(|i| {
            let err = root.read(&format!("coordinator-{round}-{i}.err"));
            (statuses[i].expect("exited"), err)
        })
        .collect();
    assert!(alive(survivor), "the survivor still runs");
    Race {
        survivor,
        losers,
        _children: children,
    }
}

/// Ten `psm coordinator` started at once on one root: exactly one keeps
/// running; the other nine exit 0 with one `already running` line, which,
/// when it names a pid, names the survivor.
#[test]
fn ten_coordinators_started_at_once_leave_exactly_one() {
    let root = Root::new();
    root.write_config(FAST);
    let race = race_ten(&root, 0);
    let named = format!("psm: already running (pid {})", race.survivor);
    for (status, err) in &race.losers {
        assert_eq!(status.code(), Some(0), "{err}");
        let err = err.trim_end();
        assert!(
            err == named || err == "psm: already running",
            "expected {named:?}: {err:?}"
        );
    }
    let survivor = race.survivor;
    drop(race); // kills and reaps the survivor
    wait_for(LIMIT, "survivor gone", || !alive(survivor));
}

/// Every loser of the race names the survivor's pid: `already running (pid N)`
/// (three rounds, each after the previous survivor was SIGKILLed, so the lock
/// file also holds a dead pid when the race starts).
#[test]
fn every_loser_names_the_surviving_coordinator() {
    let root = Root::new();
    root.write_config(FAST);
    for round in 0..3 {
        let race = race_ten(&root, round);
        for (status, err) in &race.losers {
            assert_eq!(status.code(), Some(0), "round {round}: {err}");
            assert_eq!(
                err.trim_end(),
                format!("psm: already running (pid {})", race.survivor),
                "round {round}"
            );
        }
        let survivor = race.survivor;
        drop(race); // SIGKILLs and reaps the survivor
        wait_for(LIMIT, "survivor gone", || !alive(survivor));
    }
}

// ---------------------------------------------------------------------------
// 2. Adoption after SIGKILL.

/// Three global services, one with a grandchild; each appends its pid to
/// `<name>.runs` once per run. Restarts are fast.
fn three_services(root: &Root) {
    root.script(
        "plain.sh",
        r#"echo $$ >> "$PSM_ROOT/$1.runs"
exec sleep 1000"#,
    );
    root.script(
        "tree.sh",
        r#"sleep 1000 &
echo $! > "$PSM_ROOT/tree.grandchild"
echo $$ >> "$PSM_ROOT/tree.runs"
wait"#,
    );
    root.write_config(&format!(
        r#"{FAST}
[restart]
base = "100ms"
max = "200ms"

[[service]]
name = "a"
type = "global"
command = ["sh", "plain.sh", "a"]

[[service]]
name = "b"
type = "global"
command = ["sh", "plain.sh", "b"]

[[service]]
name = "tree"
type = "global"
command = ["sh", "tree.sh"]
"#
    ));
}

/// A coordinator killed with SIGKILL and started again adopts the running
/// services: same pids in the registry, still alive, no second run of any;
/// and an adopted service killed with SIGKILL is noticed and restarted.
#[test]
fn coordinator_sigkilled_then_restarted_adopts_without_duplicates() {
    let root = Root::new();
    three_services(&root);
    let first = root.up();
    let names = ["a", "b", "tree"];
    let pids: Vec<i32> = names.iter().map(|n| root.service_pid(n)).collect();
    let grandchild = root.pid_from("tree.grandchild");
    for (n, &p) in names.iter().zip(&pids) {
        root.reaper.group(p);
        wait_for(LIMIT, &format!("{n} recorded its run"), || {
            lines(&root, &format!("{n}.runs")) == [p.to_string()]
        });
    }

    sigkill(first);
    wait_for(LIMIT, "first coordinator gone", || !alive(first));
    for &p in pids.iter().chain([&grandchild]) {
        assert!(alive(p), "pid {p} must survive its coordinator's SIGKILL");
    }

    let second = root.up();
    assert_ne!(second, first);
    wait_until(LIMIT, "the new coordinator's heartbeat", || {
        let rec = root.global(COORDINATOR);
        if pid_of(&rec) == Some(second) {
            Ok(())
        } else {
            Err(rec)
        }
    });
    thread::sleep(Duration::from_secs(1)); // proves a duplicate never starts: ten health intervals
    for (n, &p) in names.iter().zip(&pids) {
        let rec = root.global(n);
        assert_eq!(pid_of(&rec), Some(p), "{n} adopted, not restarted: {rec}");
        assert_eq!(rec["status"], "running", "{n}: {rec}");
        assert!(alive(p), "{n} (pid {p}) still runs");
        assert_eq!(
            lines(&root, &format!("{n}.runs")),
            [p.to_string()],
            "{n} ran exactly once"
        );
    }
    assert!(alive(grandchild), "the grandchild still runs");
    assert_eq!(root.pid_from("tree.grandchild"), grandchild);

    // The adopted `tree` dies: the new coordinator sees it at once (it is not
    // its child) and starts a new run; the orphaned grandchild goes too.
    sigkill(pids[2]);
    let mut restarted = 0;
    wait_until(LIMIT, "tree restarted with a new pid", || {
        let rec = root.global("tree");
        match pid_of(&rec) {
            Some(p) if p != pids[2] && alive(p) && rec["status"] == "running" => {
                restarted = p;
                Ok(())
            }
            _ => Err(rec),
        }
    });
    root.reaper.group(restarted);
    wait_for(LIMIT, "tree's second run recorded", || {
        lines(&root, "tree.runs") == [pids[2].to_string(), restarted.to_string()]
    });
    wait_for(LIMIT, "the adopted run's grandchild gone", || {
        !alive(grandchild)
    });
    for (n, &p) in names.iter().zip(&pids).take(2) {
        assert_eq!(pid_of(&root.global(n)), Some(p), "{n} untouched");
        assert!(alive(p));
    }
}

// ---------------------------------------------------------------------------
// 3. Sessions killed with SIGKILL.

/// A service whose record never reached the registry (its coordinator died
/// in between) is found by its environment and adopted by the next
/// coordinator: same pid, one run, no twin.
#[test]
fn unrecorded_service_is_adopted_not_duplicated() {
    let root = Root::new();
    three_services(&root);
    let first = root.up();
    let pid = root.service_pid("a");
    root.reaper.group(pid);
    wait_for(LIMIT, "a recorded its run", || {
        lines(&root, "a.runs") == [pid.to_string()]
    });
    sigkill(first);
    wait_for(LIMIT, "first coordinator gone", || !alive(first));
    // What the registry looks like if the coordinator died before writing a's record.
    let mut reg = root.registry();
    reg["services"]["global"]
        .as_object_mut()
        .unwrap()
        .remove("a");
    std::fs::write(root.registry_path(), serde_json::to_vec(&reg).unwrap()).unwrap();

    root.up();
    wait_until(LIMIT, "a adopted under its old pid", || {
        let rec = root.global("a");
        if pid_of(&rec) == Some(pid) && rec["status"] == "running" {
            Ok(())
        } else {
            Err(rec)
        }
    });
    thread::sleep(Duration::from_millis(500)); // proves a twin never starts: five health intervals
    assert_eq!(
        lines(&root, "a.runs"),
        [pid.to_string()],
        "a ran exactly once"
    );
    assert!(alive(pid));
}

/// `psm session run --project <project> -- sh <script>`, with the binary and
/// the test dir passed to the script.
fn session_run(root: &Root, project: &Path, script: &Path) -> Command {
    let mut cmd = root.cmd();
    cmd.args(["session", "run", "--project"])
        .arg(project)
        .arg("--")
        .arg("sh")
        .arg(script)
        .env("PSM_BIN", PSM)
        .env("PSM_TEST_DIR", root.path())
        .stdout(Stdio::null());
    cmd
}

/// With a coordinator running, a session wrapper killed with SIGKILL has its
/// services and their grandchildren ended, and leaves the registry, without
/// anyone running `psm cleanup`.
#[test]
fn sigkilled_session_is_swept_by_the_coordinator() {
    let root = Root::new();
    root.write_config(FAST);
    root.up();
    let script = support::session_command(&root, "exec sleep 1000");
    let mut children = Children::default();
    children
        .0
        .push(session_run(&root, root.path(), &script).spawn().unwrap());
    let services = [root.pid_from("alpha.pid"), root.pid_from("beta.pid")];
    for p in services {
        root.reaper.group(p);
    }
    let grandchildren = [
        root.pid_from("alpha.grandchild"),
        root.pid_from("beta.grandchild"),
    ];
    wait_for(LIMIT, "session id written", || {
        !root.read("session.id").trim().is_empty()
    });
    let id = root.read("session.id").trim().to_string();
    let reg = root.registry();
    assert!(reg["sessions"].get(&id).is_some(), "{reg}");
    assert_eq!(
        reg["services"]["sessions"][&id]
            .as_object()
            .map(|m| m.len()),
        Some(2),
        "{reg}"
    );

    let wrapper = &mut children.0[0];
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    for pid in services.into_iter().chain(grandchildren) {
        wait_for(
            LIMIT,
            &format!("pid {pid} of the dead session gone"),
            || !alive(pid),
        );
    }
    wait_until(LIMIT, "the session gone from the registry", || {
        let reg = root.registry();
        if reg["sessions"].get(&id).is_none() && reg["services"]["sessions"].get(&id).is_none() {
            Ok(())
        } else {
            Err(reg)
        }
    });
}

// ---------------------------------------------------------------------------
// 4. Per-project services.

/// A per-project service runs once for a project listed in `projects` at
/// once, once for a project while a session of it is alive, stops when that
/// session ends, and gets `{project_name}` expanded in its command.
#[test]
fn per_project_service_follows_active_projects() {
    let root = Root::new();
    let base = root.path().canonicalize().unwrap();
    let alpha = base.join("alpha");
    let beta = base.join("beta");
    fs::create_dir(&alpha).unwrap();
    fs::create_dir(&beta).unwrap();
    root.script(
        "proj.sh",
        r#"echo "$PWD" > "$PSM_ROOT/proj-$1.cwd"
echo $$ >> "$PSM_ROOT/proj-$1.runs"
echo $$ > "$PSM_ROOT/proj-$1.pid"
exec sleep 1000"#,
    );
    root.write_config(&format!(
        r#"{FAST}projects = ["{alpha}"]

[[service]]
name = "proj"
type = "per-project"
command = ["sh", "{base}/proj.sh", "{{project_name}}"]
"#,
        alpha = alpha.display(),
        base = base.display(),
    ));
    root.up();

    let alpha_pid = root.pid_from("proj-alpha.pid");
    root.reaper.group(alpha_pid);
    wait_until(LIMIT, "alpha's instance recorded", || {
        let rec = project_record(&root, &alpha, "proj");
        if pid_of(&rec) == Some(alpha_pid) && rec["status"] == "running" {
            Ok(())
        } else {
            Err(rec)
        }
    });
    assert_eq!(root.read("proj-alpha.cwd").trim(), alpha.to_string_lossy());
    thread::sleep(Duration::from_millis(500)); // proves an inactive project never gets an instance
    assert!(!root.file("proj-beta.pid").exists(), "beta is not active");
    assert!(project_record(&root, &beta, "proj").is_null());

    // A session of beta makes beta active until it ends.
    let script = root.script(
        "beta-session.sh",
        r#"while [ ! -e "$PSM_TEST_DIR/end-beta" ]; do sleep 0.02; done"#,
    );
    let mut children = Children::default();
    children
        .0
        .push(session_run(&root, &beta, &script).spawn().unwrap());
    let beta_pid = root.pid_from("proj-beta.pid");
    root.reaper.group(beta_pid);
    wait_until(LIMIT, "beta's instance recorded", || {
        let rec = project_record(&root, &beta, "proj");
        if pid_of(&rec) == Some(beta_pid) && rec["status"] == "running" {
            Ok(())
        } else {
            Err(rec)
        }
    });
    assert!(alive(beta_pid));
    assert_eq!(root.read("proj-beta.cwd").trim(), beta.to_string_lossy());

    fs::write(root.file("end-beta"), "").unwrap();
    let status = exit_of(&mut children.0[0], LIMIT, "beta's session to end");
    assert_eq!(status.code(), Some(0));
    wait_for(LIMIT, "beta's instance stopped", || !alive(beta_pid));
    wait_until(LIMIT, "beta's record gone", || {
        let rec = project_record(&root, &beta, "proj");
        if rec.is_null() {
            Ok(())
        } else {
            Err(rec)
        }
    });

    // alpha, listed in the config, was never touched.
    assert!(alive(alpha_pid));
    assert_eq!(
        pid_of(&project_record(&root, &alpha, "proj")),
        Some(alpha_pid)
    );
    assert_eq!(lines(&root, "proj-alpha.runs"), [alpha_pid.to_string()]);
    assert_eq!(lines(&root, "proj-beta.runs"), [beta_pid.to_string()]);
}

// ---------------------------------------------------------------------------
// 5. The control socket.

/// Connects to the socket as uid/gid 65534 and sends `ping` then `down` on two
/// connections; prints the uid it ran as, then each reply line.
const FOREIGN_CLIENT: &str = r#"
import os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
print(os.getuid())
for req in (b'{"cmd":"ping"}\n', b'{"cmd":"down"}\n'):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    try:
        s.sendall(req)
    except (BrokenPipeError, ConnectionResetError):
        pass  # a refusing server may close before reading; its reply is queued
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    sys.stdout.write(data.decode() if data.endswith(b"\n") else data.decode() + "\n")
"#;

/// The runtime dir is 0700 and the socket 0600; even with both opened to
/// everyone, a client of another uid is refused by the peer-credential check,
/// and the coordinator keeps serving its own user.
#[test]
fn control_socket_refuses_a_foreign_uid() {
    let root = Root::new();
    root.write_config(FAST);
    let coordinator = root.up();
    let runtime = root.file(".psm");
    let socket = runtime.join("coordinator.sock");
    assert_eq!(mode(&runtime), 0o700, ".psm mode");
    assert_eq!(mode(&socket), 0o600, "socket mode");

    // Only the peer-credential check may stand in the way now.
    chmod(root.path(), 0o755);
    chmod(&runtime, 0o777);
    chmod(&socket, 0o777);
    let out = output_within(
        {
            let mut c = Command::new("python3");
            c.arg("-c").arg(FOREIGN_CLIENT).arg(&socket);
            c
        },
        LIMIT,
        "the foreign client",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {text}{}",
        stderr(&out)
    );
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("65534"),
        "ran as the foreign uid: {text}"
    );
    for request in ["ping", "down"] {
        let line = lines.next().unwrap_or_default();
        let reply: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{request}: unreadable reply {line:?}: {e}"));
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        assert!(
            reply["message"].as_str().unwrap_or("").contains("refused"),
            "{request}: {reply}"
        );
    }

    assert_eq!(
        root.coordinator_pid(),
        Some(coordinator),
        "the down was refused"
    );
    let reload = root.ok(&["reload"]);
    assert!(reload.contains("reloaded"), "{reload}");
    let again = root.psm(&["up"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        one_line(&again, "psm up"),
        format!("psm: already running (pid {coordinator})")
    );
}

// ---------------------------------------------------------------------------
// 6. Bad config.

/// `psm up` and `psm coordinator` with an unknown key, a bad duration or a
/// duplicate service name: exit 1, one stderr line naming psm.toml, the line
/// and the key; no coordinator left running, the registry unchanged.
#[test]
fn bad_config_is_one_clear_error_and_starts_nothing() {
    let root = Root::new();
    let outsider = root.sleeper();
    root.ok(&[
        "register",
        "outsider",
        &outsider.id().to_string(),
        "global",
        "outsider.sh",
    ]);
    let before = root.registry_bytes();
    assert!(before.is_some());

    let cases: [(&str, &str, usize, &[&str]); 3] = [
        (
            "unknown key",
            r#"health-interval = "100ms"

[[service]]
name = "web"
type = "global"
command = ["sh", "-c", "exec sleep 1000"]
colour = "red"
"#,
            7,
            &["'colour'"],
        ),
        (
            "bad duration",
            r#"# durations are humantime
health-interval = "soon"
"#,
            2,
            &["'health-interval'", "soon"],
        ),
        (
            "duplicate name",
            r#"health-interval = "100ms"
[[service]]
name = "web"
type = "global"
command = ["sh", "-c", "exec sleep 1000"]
[[service]]
name = "web"
type = "global"
command = ["sh", "-c", "exec sleep 1000"]
"#,
            7,
            &["'name'", "'web'"],
        ),
    ];
    for (case, toml, line, keys) in cases {
        root.write_config(toml);
        for command in ["up", "coordinator"] {
            let what = format!("psm {command} ({case})");
            let mut cmd = root.cmd();
            cmd.arg(command);
            let out = output_within(cmd, LIMIT, &what);
            let err = one_line(&out, &what);
            assert_eq!(out.status.code(), Some(1), "{what}: {err}");
            assert!(err.contains("psm.toml"), "{what} names the file: {err}");
            assert!(
                err.contains(&format!("line {line}")),
                "{what} names line {line}: {err}"
            );
            for key in keys {
                assert!(err.contains(key), "{what} names {key}: {err}");
            }
            assert_eq!(root.coordinator_pid(), None, "{what} left a coordinator");
            assert_eq!(root.registry_bytes(), before, "{what} changed the registry");
        }
    }
    assert!(!root.file(".psm/coordinator.sock").exists());
}

// ---------------------------------------------------------------------------
// 7. Control commands.

/// The control commands in a root with no coordinator, and after one died
/// without cleaning up (a stale socket file): exit 1, one line saying none is
/// running and how to start one.
#[test]
fn control_commands_without_a_coordinator_say_how_to_start_one() {
    let root = Root::new();
    root.write_config(FAST);
    let commands: [&[&str]; 5] = [
        &["start", "x"],
        &["stop", "x"],
        &["restart", "x"],
        &["reload"],
        &["down"],
    ];
    let check = |when: &str, commands: &[&[&str]]| {
        for &args in commands {
            let what = format!("psm {args:?} {when}");
            let out = root.psm(args);
            let err = one_line(&out, &what);
            assert_eq!(out.status.code(), Some(1), "{what}: {err}");
            assert!(err.contains("no coordinator is running"), "{what}: {err}");
            assert!(err.contains("psm up"), "{what} says how: {err}");
        }
    };
    check("in a fresh root", &commands);

    let coordinator = root.up();
    sigkill(coordinator);
    wait_for(LIMIT, "coordinator gone", || !alive(coordinator));
    assert!(
        root.file(".psm/coordinator.sock").exists(),
        "stale socket left"
    );
    // Not `down`: after a crash it still stops what was left and stays down
    // (tests/down_attacks.rs).
    check("after the coordinator was killed", &commands[..4]);
}

/// With a coordinator: `start` of an unknown service is one line naming it;
/// a second `psm up` says `already running (pid N)`, exits 0 and changes no
/// pid; `psm logs svc -n 2` prints the service's last two lines and `psm logs`
/// of an unknown service is one line.
#[test]
fn control_commands_with_a_coordinator() {
    let root = Root::new();
    root.script(
        "talker.sh",
        r#"echo $$ >> "$PSM_ROOT/talker.runs"
for i in 1 2 3 4 5; do echo "line $i"; done
exec sleep 1000"#,
    );
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "talker"
type = "global"
command = ["sh", "talker.sh"]
"#
    ));
    let coordinator = root.up();
    let talker = root.service_pid("talker");
    root.reaper.group(talker);

    let out = root.psm(&["start", "nosuch"]);
    let err = one_line(&out, "psm start nosuch");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("'nosuch'"), "{err}");

    let out = root.psm(&["up"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        one_line(&out, "second psm up"),
        format!("psm: already running (pid {coordinator})")
    );
    assert_eq!(root.coordinator_pid(), Some(coordinator));
    thread::sleep(Duration::from_millis(500)); // proves a duplicate never starts: five health intervals
    assert_eq!(
        root.service_pid("talker"),
        talker,
        "second up restarted talker"
    );
    assert_eq!(lines(&root, "talker.runs"), [talker.to_string()]);

    wait_for(LIMIT, "talker's output in its log", || {
        root.read(".logs/talker.log").contains("line 5")
    });
    assert_eq!(root.ok(&["logs", "talker", "-n", "2"]), "line 4\nline 5\n");

    let out = root.psm(&["logs", "nosuch"]);
    let err = one_line(&out, "psm logs nosuch");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("'nosuch'"), "{err}");
}

/// A root without psm.toml is a valid root: `up` starts a coordinator that
/// runs no services (and heartbeats), and `down` stops it.
#[test]
fn up_without_a_config_runs_a_coordinator_with_no_services() {
    let root = Root::new();
    let pid = root.up();
    let status: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["totalServices"], 1, "only the coordinator: {status}");
    assert_eq!(pid_of(&root.global(COORDINATOR)), Some(pid));
    root.ok(&["down"]);
    wait_for(LIMIT, "coordinator gone", || !alive(pid));
}
