//! `psm logs` without a service: every service's lines, prefixed by their
//! service; `-f` follows all of them, services that start later and logs
//! that rotate included. Real coordinator, real `sh` services.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// A service that prints `<name> <n>` lines, then sleeps.
fn chatty(name: &str, count: u32) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
type = "global"
command = ["sh", "-c", "i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo {name} $i; done; exec sleep 1000"]
"#
    )
}

/// Without a service, `psm logs` prints the last N lines of every service,
/// each prefixed `name      | `, without colour through a pipe, and leaves
/// psm's own logs out.
#[test]
fn every_service_is_shown_with_its_prefix() {
    let root = Root::new();
    root.write_config(&format!("{FAST}{}{}", chatty("web", 3), chatty("db", 3)));
    root.up();
    wait_for(WAIT, "both logs written", || {
        let log = |n: &str| fs::read_to_string(root.file(&format!(".logs/{n}.log")));
        log("web").is_ok_and(|t| t.contains("web 3")) && log("db").is_ok_and(|t| t.contains("db 3"))
    });
    let text = root.ok(&["logs", "-n", "2"]);
    assert_eq!(
        text, "db        | db 2\ndb        | db 3\nweb       | web 2\nweb       | web 3\n",
        "coordinator.log must not be shown"
    );
    assert!(!text.contains('\x1b'));
}

/// `psm logs -f` follows every service, one added (and started by a
/// reload) after it began, and a log that rotates under it.
#[test]
fn follow_sees_new_services_and_rotation() {
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}[logs]\nmax-size = 512\nkeep = 1\n{}",
        chatty("web", 1)
    ));
    root.up();
    wait_for(WAIT, "web's log", || {
        fs::read_to_string(root.file(".logs/web.log")).is_ok_and(|t| t.contains("web 1"))
    });
    let out_path = root.file("followed.txt");
    let out = fs::File::create(&out_path).unwrap();
    let follower = root
        .cmd()
        .args(["logs", "-f", "-n", "10"])
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Children(vec![follower]);
    let followed = || fs::read_to_string(&out_path).unwrap_or_default();
    wait_for(WAIT, "web's first line", || {
        followed().contains("web       | web 1\n")
    });

    // A service that starts later, writing well past the rotation size.
    root.write_config(&format!(
        "{FAST}[logs]\nmax-size = 512\nkeep = 1\n{}{}",
        chatty("web", 1),
        "\n[[service]]\nname = \"late\"\ntype = \"global\"\ncommand = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo late $i; sleep 0.01; done\"]\n"
    ));
    root.ok(&["reload"]);
    wait_for(WAIT, "late's log rotated", || {
        root.file(".logs/late.log.1").exists()
    });
    // Lines written after the rotation reach the follower too.
    let mut after = 0u64;
    wait_until(WAIT, "a line of late's after its rotation", || {
        let rotated = fs::read_to_string(root.file(".logs/late.log.1")).unwrap_or_default();
        let last_rotated: u64 = rotated
            .lines()
            .filter_map(|l| l.strip_prefix("late ")?.parse().ok())
            .max()
            .unwrap_or(0);
        let text = followed();
        after = text
            .lines()
            .filter_map(|l| l.strip_prefix("late      | late ")?.parse().ok())
            .max()
            .unwrap_or(0);
        if last_rotated > 0 && after > last_rotated + 5 {
            Ok(())
        } else {
            Err((last_rotated, after))
        }
    });
    // Every followed line is whole and prefixed.
    for line in followed().lines() {
        assert!(
            line.starts_with("web       | web ") || line.starts_with("late      | late "),
            "{line:?}"
        );
    }
}

/// A service name is still one service's log, unprefixed; `--project`
/// without a service is a usage error.
#[test]
fn one_service_is_unchanged() {
    let root = Root::new();
    root.write_config(&format!("{FAST}{}", chatty("web", 2)));
    root.up();
    wait_for(WAIT, "web's log", || {
        fs::read_to_string(root.file(".logs/web.log")).is_ok_and(|t| t.contains("web 2"))
    });
    assert_eq!(root.ok(&["logs", "web", "-n", "1"]), "web 2\n");
    let out = root.psm(&["logs", "--project", "/tmp"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `--since 10m` leaves out lines stamped earlier (and the lines that
/// continue them), with and without a service; a bad duration is a usage
/// error.
#[test]
fn since_filters_stamped_lines() {
    let root = Root::new();
    let script = root.script(
        "stamped.sh",
        r#"echo "2000-01-01T00:00:00Z ancient"
echo "  ancient detail"
echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] fresh"
echo "  fresh detail"
exec sleep 1000"#,
    );
    root.write_config(&format!(
        "{FAST}\n[[service]]\nname = \"api\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\n",
        script.display()
    ));
    root.up();
    wait_for(WAIT, "api's log", || {
        fs::read_to_string(root.file(".logs/api.log")).is_ok_and(|t| t.contains("fresh detail"))
    });
    let all = root.ok(&["logs", "--since", "10m"]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    assert!(
        lines[0].starts_with("api       | [") && lines[0].ends_with("] fresh"),
        "{all}"
    );
    assert_eq!(lines[1], "api       |   fresh detail");
    let one = root.ok(&["logs", "api", "--since", "10m"]);
    assert!(
        !one.contains("ancient") && one.ends_with("] fresh\n  fresh detail\n"),
        "{one}"
    );
    assert!(root.ok(&["logs", "api"]).contains("ancient detail"));
    let bad = root.psm(&["logs", "--since", "banana"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(stderr(&bad).lines().count(), 1, "{}", stderr(&bad));
}

/// With `[logs] timestamps = true` every line of a service's log starts
/// with the time it was written (stdout and stderr, a last line without a
/// newline included), `--since` can filter them, and the stamper ends with
/// the service: after `psm stop` no stamper is left.
#[cfg(target_os = "linux")] // finds the stamper through /proc/<pid>/cmdline
#[test]
fn timestamps_stamp_every_line() {
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}[logs]\ntimestamps = true\n\n[[service]]\nname = \"api\"\ntype = \"global\"\ncommand = [\"sh\", \"-c\", \"echo out; echo err >&2; printf tail; exec sleep 1000\"]\n"
    ));
    root.up();
    let log = root.file(".logs/api.log");
    wait_for(WAIT, "two stamped lines", || {
        fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 2)
    });
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (line, want) in lines.iter().zip(["out", "err"]) {
        let (stamp, rest) = line.split_once("] ").unwrap_or_else(|| panic!("{text}"));
        assert_eq!(rest, want, "{text}");
        let stamp = stamp.strip_prefix('[').unwrap();
        humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{stamp}: {e}"));
    }
    let since = root.ok(&["logs", "api", "--since", "10m"]);
    assert_eq!(since.lines().count(), 2, "{since}");
    let stampers = || {
        all_pids()
            .into_iter()
            .filter(|&p| {
                fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*log.to_string_lossy()))
            })
            .count()
    };
    assert_eq!(stampers(), 1, "one stamper for the one service");
    root.ok(&["stop", "api"]);
    // The last line without a newline is written when the pipe closes.
    wait_for(WAIT, "the partial line and the stamper's end", || {
        fs::read_to_string(&log).is_ok_and(|t| t.ends_with("] tail\n")) && stampers() == 0
    });
}

/// `timestamps` must be a boolean: anything else is one line naming the
/// file, line and key, and nothing starts.
#[test]
fn timestamps_must_be_a_boolean() {
    let root = Root::new();
    root.write_config("[logs]\ntimestamps = \"yes\"\n");
    let out = root.psm(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("psm.toml line 2: bad value for 'timestamps' in [logs]"),
        "{err}"
    );
    assert_eq!(root.coordinator_pid(), None);
}

/// A FIFO or a link planted in `.logs` never blocks or hides the other
/// logs: each is skipped with one line on stderr, the rest is shown.
#[test]
fn hostile_files_in_the_log_directory_are_skipped() {
    let root = Root::new();
    let logs = root.file(".logs");
    fs::create_dir(&logs).unwrap();
    fs::write(logs.join("good.log"), "fine\n").unwrap();
    let fifo = logs.join("evil.log");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink(root.file("secret"), logs.join("link.log")).unwrap();
    fs::write(root.file("secret"), "do not show\n").unwrap();
    let out = output_within(
        {
            let mut c = root.cmd();
            c.args(["logs", "-n", "5"]);
            c
        },
        WAIT,
        "psm logs with a FIFO in .logs",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "good      | fine\n");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("psm: skipping ")),
        "{err}"
    );
}
