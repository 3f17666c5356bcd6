//! `psm top` for real: the binary runs in a tmux pane, the test types keys
//! with `send-keys` and reads the screen with `capture-pane`.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// A tmux server of its own (socket directory in the test's root, a unique
/// name), killed on drop with everything it runs.
struct Tmux {
    dir: std::path::PathBuf,
    name: String,
}

impl Tmux {
    /// Starts `command` in a detached `width`×`height` pane. When the
    /// command ends, the pane prints a marker and stays, so the test can
    /// read what the terminal looks like afterwards.
    fn start(root: &Root, width: u16, height: u16, command: &str) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tmux = Tmux {
            dir: root.path().to_path_buf(),
            name: format!(
                "psm-top-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ),
        };
        let shell = format!("{command}; echo \"top exited: $?\"; exec sleep 1000");
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "sh",
            "-c",
            &shell,
        ]);
        assert!(out.status.success(), "tmux: {}", stderr(&out));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .env("TMUX_TMPDIR", &self.dir)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .arg("-L")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    /// A pane variable, e.g. `alternate_on` (1 while a full-screen program
    /// holds the terminal) or `cursor_flag` (1 when the cursor is shown).
    fn pane(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Waits until the screen satisfies `cond`, failing with the screen.
    fn wait(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        wait_until(WAIT, what, || {
            last = self.screen();
            if cond(&last) {
                Ok(())
            } else {
                Err(format!("\n{last}"))
            }
        });
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The screen line that shows service `name`.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
}

fn top_command(root: &Root) -> String {
    format!("{} --root {} top", PSM, root.path().display())
}

fn require_tmux() {
    let found = Command::new("tmux").arg("-V").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "tmux is needed for these tests: apt-get install -y tmux"
    );
}

fn two_services(root: &Root) {
    root.script(
        "talk.sh",
        r#"echo "hello from $1"
exec sleep 1000"#,
    );
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "alpha"
type = "global"
command = ["sh", "talk.sh", "alpha"]

[[service]]
name = "beta"
type = "global"
command = ["sh", "talk.sh", "beta"]
"#
    ));
}

/// `psm top` shows every service live: a `psm stop` shows within the
/// refresh, `s` starts it again and `r` restarts it, `j` moves the
/// selection, `enter` opens the log, `?` the help, `q` quits and leaves the
/// terminal as it was.
#[test]
fn top_shows_changes_and_answers_keys() {
    require_tmux();
    let root = Root::new();
    two_services(&root);
    root.up();
    root.service_pid("alpha");
    root.service_pid("beta");
    let tmux = Tmux::start(&root, 100, 30, &top_command(&root));

    let screen = tmux.wait("both services running on screen", |s| {
        [("alpha", "running"), ("beta", "running")]
            .iter()
            .all(|(n, st)| row(s, n).is_some_and(|r| r.contains(st)))
    });
    assert!(screen.contains("coordinator pid"), "{screen}");
    assert!(
        tmux.pane("#{alternate_on}") == "1",
        "top holds the alternate screen"
    );
    // Memory is measured for a running service (a `-` means not measured).
    let alpha = row(&screen, "alpha").unwrap().to_string();
    assert!(
        alpha
            .split_whitespace()
            .any(|w| w.ends_with('K') || w.ends_with('M')),
        "no memory figure in {alpha:?}"
    );

    root.ok(&["stop", "alpha"]);
    tmux.wait("alpha stopped on screen", |s| {
        row(s, "alpha").is_some_and(|r| r.contains("stopped"))
            && row(s, "beta").is_some_and(|r| r.contains("running"))
    });

    // The selection starts on the first service; `j` moves it down.
    let selected = |s: &str| {
        s.lines()
            .find(|l| l.trim_start().starts_with('>'))
            .map(str::to_string)
    };
    let before = tmux.wait("a selected row", |s| selected(s).is_some());
    assert!(selected(&before).unwrap().contains("alpha"), "{before}");

    // `s` starts the stopped service, `r` restarts it: a new pid on screen.
    tmux.keys(&["s"]);
    tmux.wait("alpha started by s", |s| {
        row(s, "alpha").is_some_and(|r| r.contains("running"))
    });
    let old = root.service_pid("alpha");
    tmux.keys(&["r"]);
    let mut new = 0;
    wait_for(WAIT, "alpha restarted by r", || {
        new = root.global("alpha")["pid"].as_i64().unwrap_or(0) as i32;
        new != old && new > 0 && alive(new)
    });
    tmux.wait("the new pid on screen", |s| {
        row(s, "alpha").is_some_and(|r| r.split_whitespace().any(|w| w == new.to_string()))
    });
    tmux.keys(&["j"]);
    tmux.wait("beta selected after j", |s| {
        selected(s).is_some_and(|l| l.contains("beta"))
    });

    tmux.keys(&["Enter"]);
    tmux.wait("beta's log below the list", |s| {
        s.contains("beta.log") && s.contains("hello from beta")
    });
    tmux.keys(&["Enter", "?"]);
    tmux.wait("the help", |s| {
        s.contains("keys") && s.contains("restart it")
    });
    tmux.keys(&["?"]);
    tmux.wait("the help closed", |s| !s.contains("restart it"));
    tmux.keys(&["l"]);
    tmux.wait("beta's log on the whole screen", |s| {
        s.contains("hello from beta") && !s.contains("UPTIME")
    });
    tmux.keys(&["Escape"]);
    tmux.wait("Esc back to the list", |s| s.contains("UPTIME"));

    tmux.keys(&["q"]);
    let after = tmux.wait("top exited", |s| s.contains("top exited: 0"));
    assert!(!after.contains("LAST EXIT"), "the list is gone: {after}");
    assert_eq!(tmux.pane("#{alternate_on}"), "0", "alternate screen left");
    assert_eq!(tmux.pane("#{cursor_flag}"), "1", "cursor shown again");
}

/// At 80×24 with no coordinator, `psm top` says so in its header, still
/// shows every column, the registry's services and sessions and a record's
/// last exit reason, and Esc quits.
#[test]
fn top_without_a_coordinator_fits_80_by_24() {
    require_tmux();
    let root = Root::new();
    let sleeper = root.sleeper();
    let pid = sleeper.id().to_string();
    root.ok(&[
        "register",
        "watcher",
        &pid,
        "global",
        "sleep",
        "--meta",
        "lastExit=exited with code 3",
    ]);
    let project = root.file("proj");
    std::fs::create_dir(&project).unwrap();
    root.ok(&[
        "session",
        "register",
        "s-1",
        &pid,
        project.to_str().unwrap(),
    ]);
    let tmux = Tmux::start(&root, 80, 24, &top_command(&root));
    let screen = tmux.wait("the registered service", |s| {
        row(s, "watcher").is_some_and(|r| r.contains("running"))
    });
    assert!(
        screen.contains(&format!("session s-1 (pid {pid}, alive) (no services)")),
        "{screen}"
    );
    assert!(screen.contains("no coordinator runs"), "{screen}");
    for column in [
        "NAME",
        "STATUS",
        "PID",
        "UPTIME",
        "CPU",
        "MEM",
        "HEALTH",
        "LAST EXIT",
    ] {
        assert!(
            screen.contains(column),
            "{column} missing at 80x24:\n{screen}"
        );
    }
    assert!(screen.lines().all(|l| l.chars().count() <= 80));
    let watcher = row(&screen, "watcher").unwrap();
    assert!(watcher.contains("exited with code 3"), "{watcher:?}");

    // A record that dies shows as dead within the refresh.
    drop(sleeper);
    tmux.wait("watcher dead", |s| {
        row(s, "watcher").is_some_and(|r| r.contains("dead"))
    });
    tmux.keys(&["Escape"]);
    tmux.wait("top exited", |s| s.contains("top exited: 0"));
    assert_eq!(tmux.pane("#{alternate_on}"), "0");
}

/// Without a terminal, `psm top` says what to use instead and changes nothing.
#[test]
fn top_without_a_terminal_is_a_clear_error() {
    let root = Root::new();
    let out = root.psm(&["top"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("needs a terminal") && err.contains("psm status"),
        "{err}"
    );
    assert!(!Path::new(&root.registry_path()).exists());
}

/// Resident bytes of one process, read independently of psm.
#[cfg(target_os = "linux")]
fn rss_of(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let pages: u64 = rest
        .split_whitespace()
        .nth(24 - 3)
        .unwrap()
        .parse()
        .unwrap();
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// `psm status --json` gives a running service `cpu` and `rss`, the memory
/// summed over its process tree (leader and child), and gives a dead
/// record neither; the table shows CPU and MEM columns.
#[cfg(target_os = "linux")]
#[test]
fn status_measures_a_services_whole_tree() {
    use std::os::unix::process::CommandExt;
    let root = Root::new();
    let mut kids = Children::default();
    let leader = Command::new("sh")
        .arg("-c")
        .arg("sleep 1000 & exec sleep 1001")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = leader.id() as i32;
    root.reaper.group(pid);
    kids.0.push(leader);
    let children = || -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    wait_for(WAIT, "the leader's child", || children().len() == 1);
    let child = children()[0];
    root.ok(&["register", "tree", &pid.to_string(), "global", "sleep"]);
    let dead = root.sleeper();
    root.ok(&[
        "register",
        "gone",
        &dead.id().to_string(),
        "global",
        "sleep",
    ]);
    drop(dead);

    let status: serde_json::Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    let detail = |name: &str| {
        status["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap()
    };
    let tree = detail("tree");
    assert_eq!(
        tree["rss"].as_u64(),
        Some(rss_of(pid) + rss_of(child)),
        "{tree}"
    );
    assert!(tree["cpu"].as_f64().is_some_and(|c| c >= 0.0), "{tree}");
    let gone = detail("gone");
    assert_eq!(gone["status"], "dead");
    assert!(
        gone.get("cpu").is_none() && gone.get("rss").is_none(),
        "{gone}"
    );

    let table = root.ok(&["status"]);
    let header = table.lines().next().unwrap();
    assert!(header.contains("CPU") && header.contains("MEM"), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");
}

/// A FIFO where a service's log should be does not freeze the view: `enter`
/// says it is not a regular file and Ctrl-C (a key in raw mode) still quits.
#[test]
fn a_fifo_for_a_log_does_not_block_top() {
    require_tmux();
    let root = Root::new();
    let sleeper = root.sleeper();
    root.ok(&[
        "register",
        "piped",
        &sleeper.id().to_string(),
        "global",
        "sleep",
    ]);
    std::fs::create_dir_all(root.file(".logs")).unwrap();
    let fifo = std::ffi::CString::new(
        root.file(".logs/piped.log")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let tmux = Tmux::start(&root, 100, 30, &top_command(&root));
    tmux.wait("the service", |s| row(s, "piped").is_some());
    tmux.keys(&["Enter"]);
    tmux.wait("the FIFO refused", |s| s.contains("is not a regular file"));
    tmux.keys(&["C-c"]);
    tmux.wait("top exited", |s| s.contains("top exited: 0"));
}

/// SIGTERM ends `psm top` the way `q` does: the terminal is restored (main
/// screen, cursor shown), not left in raw mode on the alternate screen.
#[test]
fn sigterm_restores_the_terminal() {
    require_tmux();
    let root = Root::new();
    let tmux = Tmux::start(&root, 80, 24, &top_command(&root));
    tmux.wait("top running", |s| {
        s.contains("no services registered") || s.contains("NAME")
    });
    assert_eq!(tmux.pane("#{alternate_on}"), "1");
    let shell: i32 = tmux.pane("#{pane_pid}").parse().unwrap();
    let mut top = 0;
    wait_for(WAIT, "psm top under the pane's shell", || {
        top = psm::process::tree::children(shell)
            .first()
            .copied()
            .unwrap_or(0);
        top > 1
    });
    unsafe { libc::kill(top, libc::SIGTERM) };
    tmux.wait("top exited", |s| s.contains("top exited: 0"));
    assert_eq!(tmux.pane("#{alternate_on}"), "0", "alternate screen left");
    assert_eq!(tmux.pane("#{cursor_flag}"), "1", "cursor shown again");
}

/// A service held back by `depends-on` shows `waiting` and what for, its
/// dependency `starting`; both turn `running` on screen once it is ready.
#[test]
fn top_shows_waiting_and_starting() {
    require_tmux();
    let root = Root::new();
    root.script(
        "db.sh",
        r#"while [ ! -f gate ]; do sleep 0.02; done
touch ready
exec sleep 1000"#,
    );
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "db"
type = "global"
command = ["sh", "db.sh"]
health = {{ file = "ready", max-age = "1h" }}
start-period = "1h"

[[service]]
name = "web"
type = "global"
command = ["sleep", "1000"]
depends-on = ["db"]
"#
    ));
    root.up();
    let tmux = Tmux::start(&root, 120, 30, &top_command(&root));
    tmux.wait("web waiting for db, db starting", |s| {
        row(s, "web").is_some_and(|r| r.contains("waiting") && r.contains("waiting for db"))
            && row(s, "db").is_some_and(|r| r.contains("starting"))
    });
    std::fs::write(root.file("gate"), "").unwrap();
    tmux.wait("both running", |s| {
        [row(s, "web"), row(s, "db")]
            .iter()
            .all(|r| r.is_some_and(|r| r.contains("running")))
    });
    tmux.keys(&["q"]);
    tmux.wait("top exited", |s| s.contains("top exited: 0"));
}
