//! Never signal a stranger: a service's pid is handed to an unrelated process
//! that leads its own process group (as every job of an interactive shell
//! does), and every path of psm that ends a group must leave it alone.
//!
//! Linux hands out a chosen pid to the next fork after `pid - 1` is written
//! to /proc/sys/kernel/ns_last_pid (root only). Other processes on the
//! machine fork too, so placing a stranger is retried; without root or a
//! writable ns_last_pid these tests print a note and pass without checking.
//! They fight over pid allocation, so they run one at a time; the rest of
//! the file runs beside them.

mod support;

use std::fs;
use std::time::Duration;

use support::Root;

/// The stranger tests: Linux, where a pid can be handed out on purpose.
#[cfg(target_os = "linux")]
mod strangers {
    use std::fs;
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::support::{self, alive, wait_for, Root, FAST, PSM};

    use super::support::NS_LAST_PID;

    /// Takes the pid counter for this test and checks the preconditions;
    /// `None` (after a printed note) when the pid cannot be steered here.
    ///
    /// The stranger tests run one at a time, machine-wide
    /// (`support::steer_pids`): two at once would take each other's numbers.
    /// Nothing else is serialised: the other tests of this file run beside
    /// them. A stranger sharing its service's start tick, not a neighbour,
    /// was what once killed strangers in parallel runs (see `stranger_at`).
    fn steering() -> Option<fs::File> {
        let root = unsafe { libc::geteuid() } == 0;
        let guard = root.then(|| support::steer_pids(true)).flatten();
        if guard.is_none() {
            eprintln!(
                "note: skipped, needs root and a writable {NS_LAST_PID} to hand a pid to a stranger"
            );
            return None;
        }
        // Orphaned services (their `psm session spawn` or coordinator gone)
        // become our children, so we can reap them and free their pid.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        guard
    }

    /// SIGKILLs `pid` and waits until its number is free again (reaped by us,
    /// as subreaper, or by its parent). False if it stays a zombie.
    fn kill_and_free(pid: i32) -> bool {
        assert!(pid > 1);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            if psm::process::ProcInfo::read(pid).is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll, as wait_until does
        }
        false
    }

    /// A process that leads its own session and process group, records every
    /// catchable signal it gets in its log, and answers a SIGWINCH "fence" with
    /// a `fence` line. Its group is killed on drop.
    struct Stranger {
        child: Child,
        log: PathBuf,
        /// With `leave_member`, the leader exited and this member holds the group.
        member: Option<i32>,
    }

    impl Stranger {
        /// The process now in the stranger's group that answers fences.
        fn watched(&self) -> i32 {
            self.member.unwrap_or(self.child.id() as i32)
        }

        /// Asserts nothing was signalled: the watched process is alive and, after
        /// a fence (delivered after anything psm could have sent, and reported
        /// after every earlier trap: the shell runs traps in signal order and
        /// SIGWINCH is numbered above HUP, INT, QUIT, USR1, USR2, ALRM, TERM), its
        /// log holds no signal.
        fn assert_untouched(&self, path: &str) {
            let pid = self.watched();
            assert!(alive(pid), "{path}: the stranger {pid} was killed");
            unsafe { libc::kill(pid, libc::SIGWINCH) };
            wait_for(
                Duration::from_secs(10),
                "the stranger answers the fence",
                || {
                    fs::read_to_string(&self.log)
                        .unwrap_or_default()
                        .contains("fence")
                },
            );
            let log = fs::read_to_string(&self.log).unwrap();
            let signals: Vec<&str> = log
                .lines()
                .filter(|l| !matches!(*l, "ready" | "fence"))
                .collect();
            assert!(signals.is_empty(), "{path}: the stranger got {signals:?}");
            assert!(alive(pid), "{path}: the stranger {pid} was killed");
        }
    }

    impl Drop for Stranger {
        fn drop(&mut self) {
            let pgid = self.child.id() as i32;
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(m) = self.member {
                unsafe { libc::waitpid(m, std::ptr::null_mut(), 0) };
            }
        }
    }

    fn stranger_script(root: &Root) -> PathBuf {
        root.script(
            "stranger.sh",
            r#"log="$1"
    for s in HUP INT QUIT USR1 USR2 ALRM TERM; do trap "echo $s >> $log" $s; done
    trap "echo fence >> $log" WINCH
    echo ready >> "$log"
    while :; do sleep 1000 & wait $!; done"#,
        )
    }

    /// Starts a stranger at exactly `pid` (freed before), retrying while other
    /// forks on the machine take the number first. With `leave_member`, the
    /// leader starts a member of its group and exits: nobody holds `pid` then,
    /// but a group of that number exists that is not psm's.
    ///
    /// A process's identity is its pid and its start time in clock ticks
    /// (10 ms): a stranger started on the same pid within the tick the
    /// service started in is the service as far as any reader of the process
    /// table can tell (it was that, not psm, that killed strangers in
    /// parallel runs). Such a placement is no stranger; it is undone and
    /// tried again in a later tick.
    fn stranger_at(root: &Root, pid: i32, service_start: u64, leave_member: bool) -> Stranger {
        let script = stranger_script(root);
        let log = root.file(&format!("stranger-{pid}.log"));
        let member_file = root.file(&format!("member-{pid}"));
        // Every fork on the machine between our write and our fork takes
        // the number first: a build beside the tests forks hundreds of
        // times a second, so the tries are bounded by time, not by count.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            // What an undone attempt wrote must not pass for this one's.
            let _ = fs::remove_file(&log);
            let _ = fs::remove_file(&member_file);
            let mut cmd = Command::new("sh");
            if leave_member {
                cmd.arg("-c").arg(format!(
                    "sh {} {} & echo $! > {}; exit 0",
                    script.display(),
                    log.display(),
                    member_file.display()
                ));
            } else {
                cmd.arg(&script).arg(&log);
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            fs::write(NS_LAST_PID, (pid - 1).to_string()).unwrap();
            let mut child = cmd.spawn().unwrap();
            let placed = child.id() as i32 == pid;
            if !placed || support::start_time(pid) == Some(service_start) {
                // Its whole group: the script may have started its sleeper,
                // or the leaderless variant its member, already.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                if placed {
                    std::thread::sleep(Duration::from_millis(10)); // nothing happens: the clock ticks on
                }
                continue;
            }
            let mut stranger = Stranger {
                child,
                log: log.clone(),
                member: None,
            };
            if leave_member {
                let member = root.pid_from(&format!("member-{pid}"));
                stranger.member = Some(member);
                // The leader exits and is reaped: the number now has no process,
                // only the stranger's group and session.
                stranger.child.wait().unwrap();
            }
            wait_for(Duration::from_secs(10), "the stranger is ready", || {
                fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("ready")
            });
            return stranger;
        }
        panic!("could not hand pid {pid} to a stranger in 30 s");
    }

    /// Registers session `s1` held by a sleeper, and spawns service `svc` in
    /// it; returns the sleeper and the service's pid.
    fn session_with_service(root: &Root) -> (support::Sleeper, i32) {
        let shell = root.sleeper();
        root.ok(&[
            "session",
            "register",
            "s1",
            &shell.id().to_string(),
            &root.path().display().to_string(),
        ]);
        let out = root.ok(&[
            "session",
            "spawn",
            "svc",
            "--session",
            "s1",
            "--",
            "sleep",
            "1000",
        ]);
        let pid: i32 = out.trim().parse().unwrap();
        (shell, pid)
    }

    /// The service is killed from outside and its pid handed to a stranger;
    /// returns `None` (with a note) if the pid cannot be freed here.
    fn replace_with_stranger(root: &Root, pid: i32, leave_member: bool) -> Option<Stranger> {
        // The service's identity, which the stranger must not share.
        let service_start = support::start_time(pid)?;
        if !kill_and_free(pid) {
            eprintln!("note: skipped, pid {pid} stays a zombie here (no reaper)");
            return None;
        }
        Some(stranger_at(root, pid, service_start, leave_member))
    }

    fn session_record_gone(root: &Root) -> bool {
        root.registry()["services"]["sessions"].get("s1").is_none()
    }

    /// `psm session cleanup` of a session whose service's pid now belongs to a
    /// stranger leading its own group removes the record and signals nothing.
    #[test]
    fn session_cleanup_spares_a_stranger_on_a_reused_pid() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        let (_shell, pid) = session_with_service(&root);
        let Some(stranger) = replace_with_stranger(&root, pid, false) else {
            return;
        };
        root.ok(&["session", "cleanup", "s1"]);
        assert!(session_record_gone(&root), "{}", root.registry());
        stranger.assert_untouched("psm session cleanup");
    }

    /// The same when nobody holds the pid any more but the stranger's group of
    /// that number still exists (its leader exited, a member stayed): the
    /// member cannot prove it descends from the service, so it is left alone.
    #[test]
    fn session_cleanup_spares_a_strangers_group_without_its_leader() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        let (_shell, pid) = session_with_service(&root);
        let Some(stranger) = replace_with_stranger(&root, pid, true) else {
            return;
        };
        root.ok(&["session", "cleanup", "s1"]);
        assert!(session_record_gone(&root));
        stranger.assert_untouched("psm session cleanup (leaderless group)");
    }

    /// `psm cleanup` of a dead session spares the stranger on its service's pid.
    #[test]
    fn cleanup_spares_a_stranger_on_a_reused_pid() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        let (mut shell, pid) = session_with_service(&root);
        let Some(stranger) = replace_with_stranger(&root, pid, false) else {
            return;
        };
        shell.stop();
        let report: serde_json::Value =
            serde_json::from_str(&root.ok(&["cleanup", "--json"])).unwrap();
        assert_eq!(report["sessions"][0]["session"], "s1", "{report}");
        assert!(session_record_gone(&root));
        stranger.assert_untouched("psm cleanup");
    }

    /// The coordinator's session sweep spares the stranger too.
    #[test]
    fn the_session_sweep_spares_a_stranger_on_a_reused_pid() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        let (mut shell, pid) = session_with_service(&root);
        let Some(stranger) = replace_with_stranger(&root, pid, false) else {
            return;
        };
        root.write_config(FAST);
        root.up();
        shell.stop();
        wait_for(
            Duration::from_secs(10),
            "the sweep ended the session",
            || session_record_gone(&root) && root.registry()["sessions"].get("s1").is_none(),
        );
        stranger.assert_untouched("the coordinator's session sweep");
        root.ok(&["down"]);
    }

    /// The end of `psm session run` spares the stranger on its service's pid.
    #[test]
    fn the_end_of_session_run_spares_a_stranger_on_a_reused_pid() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        let go = root.file("go");
        nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The command blocks on the FIFO: it forks nothing while the test steers pids.
        let mut wrapper = support::Children::default();
        let spawned = root
            .cmd()
            .args(["session", "run", "--id", "s1", "--project"])
            .arg(root.path())
            .args(["--", "sh", "-c"])
            .arg(format!(
                "\"$PSM_BIN\" session spawn svc -- sleep 1000 > {dir}/svc.pid; read x < {go}",
                dir = root.path().display(),
                go = go.display()
            ))
            .env("PSM_BIN", PSM)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wrapper.0.push(spawned);
        let pid = root.pid_from("svc.pid");
        let Some(stranger) = replace_with_stranger(&root, pid, false) else {
            return;
        };
        fs::OpenOptions::new()
            .write(true)
            .open(&go)
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        let status = support::exit_of(
            &mut wrapper.0[0],
            Duration::from_secs(20),
            "session run ends",
        );
        assert!(status.success(), "{status:?}");
        assert!(session_record_gone(&root), "{}", root.registry());
        stranger.assert_untouched("the end of psm session run");
    }

    fn service_config(root: &Root, with_service: bool) {
        let service = if with_service {
            "[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sleep\", \"1000\"]\n"
        } else {
            ""
        };
        root.write_config(&format!("{FAST}{service}"));
    }

    /// A coordinator that starts after a service left the config ends the
    /// leftover record, but not the stranger now holding its pid.
    #[test]
    fn coordinator_start_up_spares_a_stranger_on_a_leftovers_pid() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        service_config(&root, true);
        let coordinator = root.up();
        let pid = root.service_pid("svc");
        support::sigkill(coordinator);
        wait_for(Duration::from_secs(5), "coordinator gone", || {
            !alive(coordinator)
        });
        let Some(stranger) = replace_with_stranger(&root, pid, false) else {
            return;
        };
        service_config(&root, false);
        root.up();
        wait_for(
            Duration::from_secs(10),
            "the leftover record removed",
            || root.global("svc").is_null(),
        );
        stranger.assert_untouched("coordinator start-up (leftovers)");
        root.ok(&["down"]);
    }

    /// A service the coordinator adopted exits; by the time its exit is handled
    /// (the coordinator was stopped meanwhile) its pid leads a stranger's group.
    /// The sweep of what the service left in its group spares the stranger.
    #[test]
    fn the_post_exit_group_sweep_spares_a_stranger() {
        let Some(_steering) = steering() else { return };
        let root = Root::new();
        service_config(&root, true);
        let first = root.up();
        let pid = root.service_pid("svc");
        support::sigkill(first);
        wait_for(Duration::from_secs(5), "coordinator gone", || !alive(first));
        // The service is now our child (we are its subreaper); the next
        // coordinator adopts it and watches it through a pidfd.
        let coordinator = root.up();
        wait_for(Duration::from_secs(10), "adopted", || {
            support::lines(&root, ".logs/coordinator.log")
                .iter()
                .any(|l| l.contains("adopted"))
                || root.global("svc")["pid"] == pid
        });
        unsafe { libc::kill(coordinator, libc::SIGSTOP) };
        let stranger = replace_with_stranger(&root, pid, false);
        unsafe { libc::kill(coordinator, libc::SIGCONT) };
        let Some(stranger) = stranger else { return };
        wait_for(Duration::from_secs(10), "the service restarted", || {
            let r = root.global("svc");
            r["status"] == "running" && r["pid"].as_i64().is_some_and(|p| p as i32 != pid)
        });
        stranger.assert_untouched("the post-exit group sweep");
        root.ok(&["down"]);
    }

    /// What a service leaves in its group after its leader died is still
    /// ended: members carrying psm's marker, and their env-cleared children
    /// (proved by their parent). This runs without root.
    #[test]
    fn members_left_behind_are_still_ended() {
        let root = Root::new();
        let shell = root.sleeper();
        root.ok(&[
            "session",
            "register",
            "s1",
            &shell.id().to_string(),
            &root.path().display().to_string(),
        ]);
        let dir = root.path().display().to_string();
        // leader → member (marked, by inheritance) → env -i grandchild
        let out = root.ok(&[
            "session",
            "spawn",
            "svc",
            "--session",
            "s1",
            "--",
            "sh",
            "-c",
            &format!(
                "sh -c 'env -i sleep 1000 & echo $! > {dir}/grandchild; wait' & echo $! > {dir}/member; wait"
            ),
        ]);
        let leader: i32 = out.trim().parse().unwrap();
        root.reaper.group(leader);
        let member = root.pid_from("member");
        let grandchild = root.pid_from("grandchild");
        support::sigkill(leader);
        wait_for(Duration::from_secs(5), "leader gone", || !alive(leader));
        assert!(alive(member) && alive(grandchild));
        root.ok(&["session", "cleanup", "s1"]);
        wait_for(Duration::from_secs(5), "members ended", || {
            !alive(member) && !alive(grandchild)
        });
    }
}

// Health probes tell the truth.

/// Waits until `svc`'s script (which appends its pid to `pids`) ran twice
/// and the registry counts a restart: the probe judged it unhealthy.
fn wait_restarted(root: &Root, what: &str) {
    support::wait_until(Duration::from_secs(20), what, || {
        let runs = support::lines(root, "pids").len();
        let count = root.global("svc")["restartCount"].as_u64();
        if runs >= 2 && count.is_some_and(|c| c > 0) {
            Ok(())
        } else {
            Err((runs, count))
        }
    });
}

fn probed_service(root: &Root, health: &str) {
    root.script("svc.sh", "echo $$ >> pids\nexec sleep 1000");
    root.write_config(&format!(
        "health-interval = \"50ms\"\n[restart]\nbase = \"50ms\"\n\n[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sh\", \"svc.sh\"]\nhealth = {health}\n"
    ));
}

/// A port that answers because some other process listens on it does not
/// make the service healthy: the listening socket is not in its tree, so the
/// service is restarted; `psm verify` does not say the port is held by it
/// (Linux: /proc/net/tcp; macOS: proc_pidfdinfo).
#[cfg(any(target_os = "linux", target_os = "macos"))]
#[test]
fn a_port_held_by_a_stranger_is_not_the_services_health() {
    let root = Root::new();
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stranger.local_addr().unwrap().port();
    probed_service(&root, &format!("{{ port = {port} }}"));
    let out = root.psm(&["up"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let verify = String::from_utf8_lossy(&root.psm(&["verify"]).stdout).into_owned();
    assert!(!verify.contains("held by svc"), "{verify}");
    wait_restarted(
        &root,
        "a restart: the stranger's listener is not svc's health",
    );
    let log = root.read(".logs/coordinator.log");
    assert!(log.contains("outside the service"), "{log}");
    root.ok(&["down"]);
}

/// A service whose child listens on the probed port is healthy there: the
/// socket is found in the service's tree (Linux: /proc/net/tcp and fds;
/// macOS: proc_pidfdinfo), so it is not restarted over several health
/// rounds, and `psm verify` says the port is held by it.
#[cfg(any(target_os = "linux", target_os = "macos"))]
#[test]
fn a_port_held_by_the_services_child_is_its_health() {
    let root = Root::new();
    let port = support::free_port();
    // Perl: its sockets are in the base system of both Linux and macOS.
    fs::write(
        root.file("listen.pl"),
        r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],
    Listen => 5, ReuseAddr => 1) or die "listen: $@";
open my $f, ">>", "listening" or die; print $f "$$\n"; close $f;
# Accept and drop each probe: a backlog nobody drains fills up after a few
# probes, and then a connect is no answer at all.
while (my $c = $s->accept) { close $c; }
"#,
    )
    .unwrap();
    root.script(
        "svc.sh",
        &format!("echo $$ >> pids\nperl listen.pl {port} &\nwait"),
    );
    // The start period covers perl's start-up: a probe before it listens
    // would fail and restart the service.
    root.write_config(&format!(
        "health-interval = \"50ms\"\n[restart]\nbase = \"50ms\"\n\n[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sh\", \"svc.sh\"]\nhealth = {{ port = {port} }}\nstart-period = \"3s\"\n"
    ));
    let up = std::time::Instant::now();
    let out = root.psm(&["up"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let listener = root.pid_from("listening");
    root.reaper.pid(listener);
    support::wait_until(Duration::from_secs(20), "verify: held by svc", || {
        let verify = String::from_utf8_lossy(&root.psm(&["verify"]).stdout).into_owned();
        if verify.contains("held by svc") {
            Ok(())
        } else {
            Err(verify)
        }
    });
    // Health rounds after the start period: none of them restarts it.
    while up.elapsed() < Duration::from_secs(3) {
        support::heartbeats(&root, 1);
    }
    support::heartbeats(&root, 5);
    assert_eq!(support::lines(&root, "pids").len(), 1, "svc was restarted");
    assert!(support::alive(listener), "the listener was ended");
    let log = root.read(".logs/coordinator.log");
    assert!(!log.contains("unhealthy"), "{log}");
    root.ok(&["down"]);
}

/// A health file dated an hour in the future is stale, not fresh for an
/// hour: the service is restarted and the reason names the future date.
#[test]
fn a_health_file_dated_in_the_future_is_stale() {
    let root = Root::new();
    let beat = root.file("beat");
    fs::File::create(&beat)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    probed_service(&root, "{ file = \"beat\", max-age = \"30s\" }");
    root.ok(&["up"]);
    wait_restarted(&root, "a restart: a future mtime is not fresh");
    let log = root.read(".logs/coordinator.log");
    assert!(log.contains("in the future"), "{log}");
    root.ok(&["down"]);
}
