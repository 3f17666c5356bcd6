//! Why a service last ended (`lastExit`, `exits`) and `psm status
//! <service>`, with a real coordinator and real `sh` services.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// Waits until the global service `name`'s `lastExit` satisfies `want`;
/// returns the record.
fn last_exit_where(root: &Root, name: &str, want: impl Fn(&Value) -> bool) -> Value {
    let mut record = Value::Null;
    wait_until(WAIT, &format!("{name}'s lastExit"), || {
        record = root.global(name);
        if want(&record["lastExit"]) {
            Ok(())
        } else {
            Err(record.clone())
        }
    });
    record
}

/// A service that exits with code 3 records `exited with code 3` (code 3,
/// no signal) as its last exit, keeps only its last 5 exits, and the status
/// table and `--json` show the reason once it has given up.
#[test]
fn an_exit_code_is_recorded_and_shown() {
    let root = Root::new();
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "crash"
type = "global"
command = ["sh", "-c", "exit 3"]
restart = {{ base = "0s", max = "0s", attempts = 7 }}
"#
    ));
    root.up();
    let mut record = Value::Null;
    wait_until(WAIT, "crash failed", || {
        record = root.global("crash");
        if record["status"] == "failed" {
            Ok(())
        } else {
            Err(record.clone())
        }
    });
    let last = &record["lastExit"];
    assert_eq!(last["reason"], "exited with code 3", "{record}");
    assert_eq!(last["code"], 3);
    assert_eq!(last["signal"], Value::Null);
    assert!(last["time"].as_u64().unwrap() > 0);
    let exits = record["exits"].as_array().expect("exits");
    assert_eq!(exits.len(), 5, "8 exits, the last 5 kept: {record}");
    assert_eq!(exits.last(), Some(last));

    let table = root.ok(&["status"]);
    let row = table
        .lines()
        .position(|l| l.starts_with("crash "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        table.lines().nth(row + 1),
        Some("  └ exited with code 3"),
        "{table}"
    );
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");

    let json: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    let detail = json["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "crash")
        .cloned()
        .unwrap();
    assert_eq!(detail["lastExit"]["reason"], "exited with code 3");
}

/// A SIGKILLed service records `killed by SIGKILL` with the signal's name
/// and no code.
#[test]
fn a_kill_is_recorded_by_signal_name() {
    let root = Root::new();
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "sleepy"
type = "global"
command = ["sleep", "1000"]
restart = {{ base = "10s", max = "10s" }}
"#
    ));
    root.up();
    let pid = root.service_pid("sleepy");
    sigkill(pid);
    let record = last_exit_where(&root, "sleepy", |e| !e.is_null());
    let last = &record["lastExit"];
    assert_eq!(last["reason"], "killed by SIGKILL", "{record}");
    assert_eq!(last["signal"], "SIGKILL");
    assert_eq!(last["code"], Value::Null);
    // In backoff (not running): the table says why.
    let table = root.ok(&["status"]);
    assert!(table.contains("  └ killed by SIGKILL"), "{table}");
}

/// A program that does not exist records why it could not start.
#[test]
fn a_failed_start_is_recorded() {
    let root = Root::new();
    let missing = root.file("no-such-program");
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "ghost"
type = "global"
command = ["{}"]
restart = {{ attempts = 0 }}
"#,
        missing.display()
    ));
    root.up();
    let record = last_exit_where(&root, "ghost", |e| !e.is_null());
    assert_eq!(
        record["lastExit"]["reason"], "could not start: No such file or directory (os error 2)",
        "{record}"
    );
    let table = root.ok(&["status"]);
    assert!(
        table.contains("  └ could not start: No such file or directory"),
        "{table}"
    );
}

/// A start whose working directory is missing says so, naming it, rather
/// than the "No such file or directory" a missing program gives.
#[test]
fn a_missing_working_directory_is_named() {
    let root = Root::new();
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "lost"
type = "global"
command = ["sleep", "1000"]
cwd = "no-such-dir"
restart = {{ attempts = 0 }}
"#
    ));
    root.up();
    let record = last_exit_where(&root, "lost", |e| !e.is_null());
    let reason = record["lastExit"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("could not start: working directory ")
            && reason.contains("no-such-dir")
            && reason.contains("No such file or directory"),
        "{record}"
    );
}

/// A service killed for a failed probe records the probe's reason, not
/// just the SIGKILL; the detail view shows the probe and its last result.
#[test]
fn a_failed_probe_is_recorded_with_its_reason() {
    let root = Root::new();
    let port = free_port();
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "deaf"
type = "global"
command = ["sleep", "1000"]
health = {{ port = {port} }}
restart = {{ base = "10s", max = "10s" }}
"#
    ));
    root.up();
    let record = last_exit_where(&root, "deaf", |e| !e.is_null());
    let reason = record["lastExit"]["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with(&format!("health probe failed: port 127.0.0.1:{port}")),
        "{record}"
    );
    assert_eq!(record["lastExit"]["signal"], "SIGKILL");
    let detail = root.ok(&["status", "deaf"]);
    assert!(
        detail.contains(&format!("health      port 127.0.0.1:{port}")),
        "{detail}"
    );
    assert!(detail.contains(&reason), "{detail}");
}

/// `psm status web` shows the service in detail: command, cwd, pid, pgid,
/// its child, log path, exits; `--json` has the same; an unknown service is
/// one line on stderr and exit 1.
#[test]
fn one_service_in_detail() {
    let root = Root::new();
    let script = root.script(
        "web.sh",
        r#"sleep 1000 &
echo $! > child.pid
wait"#,
    );
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "web"
type = "global"
command = ["sh", "{}"]
restart = {{ base = "0s" }}
"#,
        script.display()
    ));
    root.up();
    let first = root.service_pid("web");
    sigkill(first); // one exit to show
    let mut pid = first;
    wait_for(WAIT, "web restarted", || {
        pid = root.service_pid("web");
        pid != first
    });
    let mut child = 0;
    wait_until(WAIT, "the new run's child", || {
        let text = std::fs::read_to_string(root.file("child.pid")).unwrap_or_default();
        child = text.trim().parse().unwrap_or(0);
        // The old run's child was killed with its group; wait for the new one.
        if child > 0 && parent_of(child) == Some(pid) {
            Ok(())
        } else {
            Err(child)
        }
    });

    let text = root.ok(&["status", "web"]);
    for want in [
        "web (global)".to_string(),
        "  status      running".to_string(),
        format!("  command     sh {}", script.display()),
        format!("  cwd         {}", root.path().display()),
        format!("  pid         {pid}"),
        format!("  pgid        {pid}"),
        "  restarts    1".to_string(),
        format!("  children    1 ({child})"),
        format!(
            "  log         {}",
            root.path().join(".logs/web.log").display()
        ),
    ] {
        assert!(text.lines().any(|l| l == want), "no {want:?} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("  exits ") && l.ends_with("  killed by SIGKILL")),
        "{text}"
    );

    let json: Value = serde_json::from_str(&root.ok(&["status", "web", "--json"])).unwrap();
    let d = &json[0];
    assert_eq!(d["pid"], pid);
    assert_eq!(d["pgid"], pid);
    assert_eq!(d["children"], serde_json::json!([child]));
    assert_eq!(d["exits"][0]["reason"], "killed by SIGKILL");
    assert!(d["uptime"].as_u64().is_some(), "{d}");
    assert!(d["rss"].as_u64().unwrap() > 0, "{d}");

    let out = root.psm(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no service named 'nope'"), "{err}");
}

/// The parent pid of `pid`, from `ps` (Linux and macOS).
fn parent_of(pid: i32) -> Option<i32> {
    let out = std::process::Command::new("ps")
        .args(["-o", "ppid=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Exits that arrive together (one SIGCHLD may stand for many) each reach
/// the run they belong to: twelve services blocked on one FIFO are released
/// at once and exit with codes of their own; each records its own code,
/// exactly once, and runs again.
#[test]
fn exits_arriving_together_each_reach_their_own_service() {
    use std::io::Write;
    let root = Root::new();
    let fifo = root.file("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Held open for reading and writing, so no service's open blocks and
    // each `read` takes one line.
    let mut go = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    // The first run waits for its line and exits; later runs stay up.
    let script = root.script(
        "svc.sh",
        "[ -e \"$0.$1\" ] && exec sleep 1000\n: > \"$0.$1\"\nread line < \"$0.fifo\"\nexit \"$1\"",
    );
    std::fs::rename(&fifo, root.file("svc.sh.fifo")).unwrap();
    let codes: Vec<u8> = (10..22).collect();
    let mut config = String::from(FAST);
    for code in &codes {
        config.push_str(&format!(
            "[[service]]\nname = \"s{code}\"\ntype = \"global\"\ncommand = [\"{}\", \"{code}\"]\nrestart = {{ base = \"0s\", max = \"0s\" }}\n",
            script.display()
        ));
    }
    root.write_config(&config);
    root.up();
    for code in &codes {
        root.service_pid(&format!("s{code}"));
    }
    go.write_all(&vec![b'\n'; codes.len()]).unwrap();
    for code in &codes {
        let name = format!("s{code}");
        let record = last_exit_where(&root, &name, |e| !e.is_null());
        assert_eq!(record["lastExit"]["code"], u64::from(*code), "{record}");
        assert_eq!(
            record["exits"].as_array().map(Vec::len),
            Some(1),
            "{record}"
        );
        root.service_pid(&name);
    }
    root.ok(&["down"]);
}

/// A service's program is found as `exec` finds it from the service's own
/// environment and directory: a bare name through the `PATH` its config
/// sets, `./name` in its `cwd`, and a script without `#!` runs under
/// `/bin/sh`. Each service writes its working directory to prove it ran.
#[test]
fn programs_are_found_through_the_services_own_path_and_directory() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    let (bin, work) = (root.file("bin"), root.file("work"));
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&work).unwrap();
    let tool = |path: std::path::PathBuf, shebang: bool| {
        let body = "pwd > \"$1\"\nexec sleep 1000\n";
        let text = if shebang {
            format!("#!/bin/sh\n{body}")
        } else {
            body.to_string()
        };
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    tool(bin.join("psm-test-tool"), true);
    tool(work.join("local-tool"), true);
    tool(work.join("no-shebang"), false);
    let mut config = String::from(FAST);
    for (name, program, cwd, path) in [
        (
            "by-path",
            "psm-test-tool",
            root.path(),
            bin.display().to_string(),
        ),
        (
            "by-cwd",
            "./local-tool",
            work.as_path(),
            "/usr/bin:/bin".to_string(),
        ),
        (
            "no-shebang",
            "./no-shebang",
            work.as_path(),
            "/usr/bin:/bin".to_string(),
        ),
    ] {
        config.push_str(&format!(
            "[[service]]\nname = \"{name}\"\ntype = \"global\"\ncommand = [\"{program}\", \"{}\"]\ncwd = \"{}\"\nenv = {{ PATH = \"{path}:/usr/bin:/bin\" }}\n",
            root.file(&format!("{name}.ran")).display(),
            cwd.display(),
        ));
    }
    root.write_config(&config);
    root.up();
    for (name, cwd) in [
        ("by-path", root.path()),
        ("by-cwd", &work),
        ("no-shebang", &work),
    ] {
        root.service_pid(name);
        wait_until(WAIT, &format!("{name} ran"), || {
            let ran =
                std::fs::read_to_string(root.file(&format!("{name}.ran"))).unwrap_or_default();
            let want = cwd.canonicalize().unwrap();
            (std::path::Path::new(ran.trim()) == want)
                .then_some(())
                .ok_or(ran)
        });
    }
    root.ok(&["down"]);
}

/// A service starts with every standard signal at its default disposition,
/// whatever `psm up` was started with: `nohup`, some CI runners and shell
/// jobs hand commands SIGHUP, SIGINT or SIGQUIT ignored, and a service that
/// inherited an ignored stop signal would make every stop wait out its
/// timeout before SIGKILL. Both ways of starting: `posix_spawn`, and the
/// fork psm uses once it raised its open-file limit (a soft limit of 64
/// makes it raise).
#[test]
fn a_service_starts_with_default_signal_dispositions() {
    for soft_nofile in [None, Some(64)] {
        ignored_signals_do_not_reach_the_service(soft_nofile);
    }
}

fn ignored_signals_do_not_reach_the_service(soft_nofile: Option<u64>) {
    use std::os::unix::process::CommandExt;
    let root = Root::new();
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "sig"
type = "global"
command = ["sh", "-c", "grep SigIgn /proc/$$/status > \"$PSM_ROOT/sigign\"; exec sleep 1000"]
"#
    ));
    let mut up = root.cmd();
    up.arg("up");
    // SAFETY: signal() is async-signal-safe; nothing else runs here.
    unsafe {
        up.pre_exec(move || {
            if let Some(soft) = soft_nofile {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: libc::RLIM_INFINITY,
                };
                let mut old = limit;
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
                let limit = libc::rlimit {
                    rlim_max: old.rlim_max,
                    ..limit
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            for sig in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGTERM,
            ] {
                libc::signal(sig, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let out = up.output().unwrap();
    assert!(out.status.success(), "psm up: {}", stderr(&out));
    let mut line = String::new();
    wait_until(WAIT, "the service wrote its SigIgn", || {
        line = std::fs::read_to_string(root.file("sigign")).unwrap_or_default();
        if line.ends_with('\n') {
            Ok(())
        } else {
            Err(line.clone())
        }
    });
    let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    // Signals 1-31; glibc's posix_spawn leaves its two internal signals
    // (32, 33) ignored, which no program outside glibc uses.
    assert_eq!(
        mask & 0x7fff_ffff,
        0,
        "ignored in the service (soft open-file limit {soft_nofile:?}): {line}"
    );
}
