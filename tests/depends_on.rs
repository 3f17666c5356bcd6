//! `depends-on` with readiness, with a real coordinator and real `sh`
//! services that append what happens to them to one `order` file.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A service that appends `<name> start` when it starts and `<name>
/// stopped` when it gets SIGTERM, and runs until then.
fn service(root: &Root, name: &str, extra: &str) -> String {
    let script = root.script(
        &format!("{name}.sh"),
        &format!(
            r#"trap 'rm -f {name}.up; echo "{name} stopped" >> order; exit 0' TERM
echo "{name} start" >> order
touch {name}.up
while :; do sleep 0.05; done"#
        ),
    );
    // Ready once its start line is written (the probe's file comes after
    // it): without a probe a service is ready at spawn, and a dependent's
    // shell could then write its line before the dependency's does.
    format!(
        "[[service]]\nname = \"{name}\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nhealth = {{ file = \"{name}.up\", max-age = \"1h\" }}\nstart-period = \"1h\"\n{extra}\n",
        script.display()
    )
}

/// `psm status --json`'s entry for `name`.
fn detail(root: &Root, name: &str) -> Value {
    let json: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    json["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_status(root: &Root, name: &str, status: &str) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("{name} {status}"), || {
        last = root.global(name);
        if last["status"] == status {
            Ok(())
        } else {
            Err(last.clone())
        }
    });
    last
}

fn order(root: &Root) -> Vec<String> {
    lines(root, "order")
}

/// A dependent starts only once its dependency's health probe has passed:
/// until then it is recorded `waiting` (the table says `waiting for db`,
/// `--json` carries it, `status web` shows it) and the dependency
/// `starting`.
#[test]
fn a_dependent_waits_for_its_dependency_to_be_ready() {
    let root = Root::new();
    let db = root.script(
        "db.sh",
        r#"echo "db start" >> order
while [ ! -f gate ]; do sleep 0.02; done
echo "db ready" >> order
touch ready
while :; do sleep 0.05; done"#,
    );
    root.write_config(&format!(
        "{FAST}[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nhealth = {{ file = \"ready\", max-age = \"1h\" }}\nstart-period = \"1h\"\n{}",
        db.display(),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    wait_until(WAIT, "web waiting for db in status --json", || {
        let d = detail(&root, "web");
        if d["status"] == "waiting" && d["waiting"] == "waiting for db" {
            Ok(())
        } else {
            Err(d)
        }
    });
    assert_eq!(detail(&root, "db")["status"], "starting");
    let table = root.ok(&["status"]);
    assert!(table.contains("  └ waiting for db"), "{table}");
    let one = root.ok(&["status", "web"]);
    assert!(one.contains("waiting (waiting for db)"), "{one}");
    // db is held in its start (until the gate file exists): web has not
    // started.
    wait_for(WAIT, "db started", || !order(&root).is_empty());
    assert_eq!(order(&root), ["db start"]);

    std::fs::write(root.file("gate"), "").unwrap();
    wait_status(&root, "web", "running");
    assert_eq!(wait_status(&root, "db", "running")["status"], "running");
    assert_eq!(order(&root), ["db start", "db ready", "web start"]);
}

/// `psm stop db` stops its dependent first and both stay stopped; `psm
/// start web` starts db too and web waits for it; `down` stops web before
/// db.
#[test]
fn stops_go_dependents_first_and_starts_take_dependencies_along() {
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}{}{}",
        service(&root, "db", ""),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    wait_for(WAIT, "both started", || order(&root).len() == 2);
    assert_eq!(order(&root), ["db start", "web start"]);

    let said = root.ok(&["stop", "db"]);
    assert!(
        said.contains("web"),
        "names the dependent it stopped: {said}"
    );
    assert_eq!(
        order(&root)[2..],
        ["web stopped", "db stopped"],
        "dependent first"
    );
    assert_eq!(root.global("web")["status"], "stopped");
    assert_eq!(root.global("db")["status"], "stopped");

    root.ok(&["start", "web"]);
    wait_status(&root, "web", "running");
    assert_eq!(root.global("db")["status"], "running");
    assert_eq!(order(&root)[4..], ["db start", "web start"]);

    root.ok(&["down"]);
    assert_eq!(order(&root)[6..], ["web stopped", "db stopped"]);
}

/// Restarting a dependency restarts the dependents that say `restart-with`
/// it, and leaves the others running as they are.
#[test]
fn restart_with_restarts_only_those_that_ask() {
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}{}{}{}",
        service(&root, "db", ""),
        service(
            &root,
            "web",
            "depends-on = [\"db\"]\nrestart-with = [\"db\"]"
        ),
        service(&root, "api", "depends-on = [\"db\"]"),
    ));
    root.up();
    let (db, web, api) = (
        root.service_pid("db"),
        root.service_pid("web"),
        root.service_pid("api"),
    );
    root.ok(&["restart", "db"]);
    wait_for(WAIT, "db and web restarted", || {
        let now = (pid_of(&root.global("db")), pid_of(&root.global("web")));
        // The new processes may be recorded before their script has
        // written its line: wait for the lines too.
        let starts = |what: &str| order(&root).iter().filter(|l| *l == what).count();
        matches!(now, (Some(d), Some(w)) if d != db && w != web && alive(d) && alive(w))
            && starts("db start") == 2
            && starts("web start") == 2
    });
    // web's restart followed db's readiness; api, told at the same moment
    // if it were to restart, kept its process.
    assert_eq!(pid_of(&root.global("api")), Some(api));
    assert!(alive(api));
    let order = order(&root);
    let db_again = order.iter().rposition(|l| l == "db start").unwrap();
    let web_again = order.iter().rposition(|l| l == "web start").unwrap();
    assert!(db_again < web_again, "{order:?}");
    assert_eq!(order.iter().filter(|l| *l == "api start").count(), 1);
}

/// A dependency that gives up leaves its dependent waiting, with a reason
/// that says so, and the dependent never starts; once the dependency is
/// restarted and ready, the dependent starts.
#[test]
fn a_failed_dependency_keeps_dependents_waiting_with_a_reason() {
    let root = Root::new();
    let db = root.script(
        "db.sh",
        r#"[ -f fixed ] || exit 4
echo "db start" >> order
while :; do sleep 0.05; done"#,
    );
    root.write_config(&format!(
        "{FAST}[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nstart-period = \"300ms\"\nrestart = {{ base = \"0s\", max = \"0s\", attempts = 2 }}\n{}",
        db.display(),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    wait_status(&root, "db", "failed");
    let mut d = Value::Null;
    wait_until(WAIT, "web's reason names db's failure", || {
        d = detail(&root, "web");
        let why = d["waiting"].as_str().unwrap_or_default();
        if d["status"] == "waiting" && why.contains("failed after 3 attempts") {
            Ok(())
        } else {
            Err(d.clone())
        }
    });
    let why = d["waiting"].as_str().unwrap();
    assert!(why.contains("exited with code 4"), "{why}");
    assert!(why.contains("psm restart db"), "{why}");
    assert!(order(&root).is_empty(), "web never started");

    std::fs::write(root.file("fixed"), "").unwrap();
    root.ok(&["restart", "db"]);
    wait_status(&root, "web", "running");
    assert_eq!(order(&root), ["db start", "web start"]);
}

/// A cycle, an unknown name or a self-dependency is one line naming the
/// file, line and key; `up` starts nothing, and `reload` keeps what runs.
#[test]
fn bad_dependencies_are_refused_with_file_and_line() {
    let root = Root::new();
    let cases = [
        (
            format!(
                "{}{}",
                service(&root, "a", "depends-on = [\"b\"]"),
                service(&root, "b", "depends-on = [\"a\"]")
            ),
            "line 14",
            "dependency cycle",
        ),
        (
            service(&root, "a", "depends-on = [\"nope\"]"),
            "line 7",
            "unknown service 'nope'",
        ),
        (
            service(&root, "a", "depends-on = [\"a\"]"),
            "line 7",
            "names the service itself",
        ),
    ];
    let config = root.file("psm.toml").display().to_string();
    for (text, line, what) in &cases {
        root.write_config(text);
        let out = root.psm(&["up"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&config), "{err}");
        assert!(err.contains(line) && err.contains(what), "{err}");
        assert!(err.contains("'depends-on'"), "{err}");
        assert_eq!(root.coordinator_pid(), None);
        assert!(order(&root).is_empty(), "nothing started");
    }

    // A cycle brought in by a reload is refused; what runs stays.
    root.write_config(&format!(
        "{FAST}{}{}",
        service(&root, "a", ""),
        service(&root, "b", "depends-on = [\"a\"]")
    ));
    root.up();
    let b = root.service_pid("b");
    root.write_config(&cases[0].0);
    let out = root.psm(&["reload"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("dependency cycle"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.service_pid("b"), b);
}

/// A dependency that is ready and then crash-loops restarts, on each new
/// ready run, the dependents that `restart-with` it; the others keep their
/// one process throughout.
#[test]
fn a_crash_looping_dependency_leaves_other_dependents_alone() {
    let root = Root::new();
    let db = root.script(
        "db.sh",
        r#"echo "db start" >> order
sleep 0.2
exit 1"#,
    );
    root.write_config(&format!(
        "{FAST}[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nrestart = {{ base = \"50ms\", max = \"50ms\", attempts = 1000 }}\n{}{}",
        db.display(),
        service(&root, "web", "depends-on = [\"db\"]\nrestart-with = [\"db\"]"),
        service(&root, "api", "depends-on = [\"db\"]"),
    ));
    root.up();
    let count = |what: &str| order(&root).iter().filter(|l| *l == what).count();
    wait_for(WAIT, "db restarted 4 times and web with it", || {
        count("db start") >= 5 && count("web start") >= 4
    });
    // Four of db's restarts have come and gone: api, had it been restarted
    // with any of them, would have started again.
    assert_eq!(count("api start"), 1, "{:?}", order(&root));
    let api = pid_of(&root.global("api")).expect("api's pid");
    assert!(alive(api));
}

/// Two `psm start web` at once, with web and its dependency stopped: one db
/// and one web start, and both commands succeed.
#[test]
fn two_starts_racing_start_one_of_each() {
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}{}{}",
        service(&root, "db", ""),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    wait_for(WAIT, "both started", || order(&root).len() == 2);
    root.ok(&["stop", "db"]);
    let racers: Vec<_> = (0..2)
        .map(|_| {
            root.cmd()
                .args(["start", "web"])
                .spawn()
                .expect("psm start")
        })
        .collect();
    for mut r in racers {
        assert!(r.wait().unwrap().success());
    }
    wait_status(&root, "web", "running");
    let after: Vec<String> = order(&root)[4..].to_vec();
    assert_eq!(after, ["db start", "web start"]);
    let d = pid_of(&root.global("db")).unwrap();
    assert!(alive(d));
}

/// A per-project service may depend on a global one: it starts after it,
/// and stopping the global one stops the project's instance first.
#[test]
fn a_per_project_service_follows_a_global_dependency() {
    let root = Root::new();
    let project = tempfile::tempdir().unwrap();
    let web = root.script(
        "web.sh",
        r#"trap 'echo "web stopped" >> "$ORDER"; exit 0' TERM
echo "web start" >> "$ORDER"
while :; do sleep 0.05; done"#,
    );
    root.write_config(&format!(
        "{FAST}projects = [\"{}\"]\n{}[[service]]\nname = \"web\"\ntype = \"per-project\"\ncommand = [\"sh\", \"{}\"]\nenv = {{ ORDER = \"{}\" }}\ndepends-on = [\"db\"]\n",
        project.path().display(),
        service(&root, "db", ""),
        web.display(),
        root.file("order").display(),
    ));
    root.up();
    wait_for(WAIT, "both started", || order(&root).len() == 2);
    assert_eq!(order(&root), ["db start", "web start"]);
    root.ok(&["stop", "db"]);
    assert_eq!(order(&root)[2..], ["web stopped", "db stopped"]);
}

/// A coordinator SIGKILLed while a dependent waits: the next one adopts the
/// starting dependency, keeps the dependent waiting, and starts it once the
/// dependency is ready, once.
#[test]
fn waiting_survives_a_coordinator_restart() {
    let root = Root::new();
    let db = root.script(
        "db.sh",
        r#"echo "db start" >> order
while [ ! -f gate ]; do sleep 0.02; done
touch ready
while :; do sleep 0.05; done"#,
    );
    root.write_config(&format!(
        "{FAST}[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nhealth = {{ file = \"ready\", max-age = \"1h\" }}\nstart-period = \"1h\"\n{}",
        db.display(),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    let first = root.up();
    wait_status(&root, "web", "waiting");
    let db_pid = pid_of(&wait_status(&root, "db", "starting")).unwrap();
    sigkill(first);
    wait_for(WAIT, "first coordinator gone", || !alive(first));
    root.up();
    wait_for(WAIT, "db adopted by the new coordinator", || {
        root.coordinator_pid().is_some_and(|c| c != first)
            && root.global("web")["status"] == "waiting"
    });
    std::fs::write(root.file("gate"), "").unwrap();
    wait_status(&root, "web", "running");
    assert_eq!(
        pid_of(&root.global("db")),
        Some(db_pid),
        "adopted, not restarted"
    );
    assert_eq!(order(&root), ["db start", "web start"]);
}

/// A reload that adds a `depends-on` restarts the service, which then waits
/// for its new dependency; one that removes it lets the service run at once.
#[test]
fn reload_adds_and_removes_dependencies() {
    let root = Root::new();
    let db = root.script(
        "db.sh",
        r#"while [ ! -f gate ]; do sleep 0.02; done
touch ready
while :; do sleep 0.05; done"#,
    );
    let db = format!(
        "[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nhealth = {{ file = \"ready\", max-age = \"1h\" }}\nstart-period = \"1h\"\n",
        db.display()
    );
    let without = format!("{FAST}{db}{}", service(&root, "web", ""));
    let with = format!(
        "{FAST}{db}{}",
        service(&root, "web", "depends-on = [\"db\"]")
    );
    root.write_config(&without);
    root.up();
    wait_status(&root, "web", "running");
    assert_eq!(root.global("db")["status"], "starting");

    root.write_config(&with);
    root.ok(&["reload"]);
    let d = wait_status(&root, "web", "waiting");
    assert_eq!(d["metadata"]["waiting"], "waiting for db", "{d}");
    assert_eq!(order(&root), ["web start", "web stopped"]);

    root.write_config(&without);
    root.ok(&["reload"]);
    wait_status(&root, "web", "running");
    wait_for(WAIT, "web started again", || order(&root).len() == 3);
    assert_eq!(order(&root)[2], "web start");
}

/// `db` held in its start (a probe that does not pass yet, a long start
/// period).
fn slow_db(root: &Root) -> String {
    let db = root.script(
        "db.sh",
        r#"while [ ! -f gate ]; do sleep 0.02; done
touch ready
while :; do sleep 0.05; done"#,
    );
    format!(
        "[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nhealth = {{ file = \"ready\", max-age = \"1h\" }}\nstart-period = \"1h\"\n",
        db.display()
    )
}

/// A per-project service of `dir`, depending on `dep`.
fn project_service(root: &Root, name: &str, dep: &str) -> String {
    let script = root.script(
        &format!("{name}.sh"),
        &format!(
            "trap 'echo \"{name} stopped $PWD\" >> \"$ORDER\"; exit 0' TERM\necho \"{name} start $PWD\" >> \"$ORDER\"\nwhile :; do sleep 0.05; done"
        ),
    );
    format!(
        "[[service]]\nname = \"{name}\"\ntype = \"per-project\"\ncommand = [\"sh\", \"{}\"]\nenv = {{ ORDER = \"{}\" }}\ndepends-on = [\"{dep}\"]\n",
        script.display(),
        root.file("order").display(),
    )
}

fn project_record(root: &Root, project: &std::path::Path, name: &str) -> Value {
    root.registry()["services"]["projects"][project.to_string_lossy().as_ref()][name].clone()
}

/// A project that goes inactive while its instance waits for a global
/// dependency: the waiting record goes, and the coordinator keeps
/// answering (it used to panic on the waiting instance, which has no actor).
#[test]
fn a_project_going_inactive_while_its_instance_waits() {
    let root = Root::new();
    let project = tempfile::tempdir().unwrap();
    root.write_config(&format!(
        "{FAST}{}{}",
        slow_db(&root),
        project_service(&root, "app", "db"),
    ));
    root.up();
    let mut session = root.sleeper();
    let pid = session.id().to_string();
    let dir = project.path().to_string_lossy().into_owned();
    root.ok(&["session", "register", "s1", &pid, &dir]);
    wait_until(WAIT, "app waiting", || {
        let r = project_record(&root, project.path(), "app");
        if r["status"] == "waiting" {
            Ok(())
        } else {
            Err(r)
        }
    });
    session.stop();
    wait_until(WAIT, "app's waiting record gone", || {
        let r = project_record(&root, project.path(), "app");
        if r.is_null() {
            Ok(())
        } else {
            Err(r)
        }
    });
    // The coordinator still carries out changes (a panicked one refuses
    // every request as stopping).
    let said = root.ok(&["restart", "db"]);
    assert!(said.contains("restarted db"), "{said}");
    root.ok(&["status"]);
    assert!(order(&root).is_empty(), "app never started");

    // The project active again: app waits again, and starts once db is
    // ready — nothing of the first wait is left to confuse the second.
    let session = root.sleeper();
    let pid = session.id().to_string();
    root.ok(&["session", "register", "s2", &pid, &dir]);
    wait_until(WAIT, "app waiting again", || {
        let r = project_record(&root, project.path(), "app");
        if r["status"] == "waiting" {
            Ok(())
        } else {
            Err(r)
        }
    });
    std::fs::write(root.file("gate"), "").unwrap();
    wait_for(WAIT, "app started", || !order(&root).is_empty());
    assert_eq!(order(&root).len(), 1, "{:?}", order(&root));
}

/// `psm stop web` while web waits replies only once web's `stopped` record
/// is on disk: the registry read the moment the command returns says
/// `stopped` (it used to still say `waiting` for a batch window).
#[test]
fn stopping_a_waiting_service_records_it_before_replying() {
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}{}{}",
        slow_db(&root),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    wait_status(&root, "web", "waiting");
    // A few rounds: each read follows its command at once.
    for _ in 0..5 {
        root.ok(&["stop", "web"]);
        let registry: Value =
            serde_json::from_slice(&std::fs::read(root.registry_path()).unwrap()).unwrap();
        assert_eq!(registry["services"]["global"]["web"]["status"], "stopped");
        root.ok(&["start", "web"]);
        wait_status(&root, "web", "waiting");
    }
}

/// A per-project dependency that gave up: the dependent's reason hints a
/// command that restarts it, and that command, run as printed (split as a
/// shell would), works — for a project path with a space in it too.
#[test]
fn the_hint_for_a_per_project_dependency_is_a_working_command() {
    let root = Root::new();
    let parent = tempfile::tempdir().unwrap();
    let project = parent.path().join("my proj");
    std::fs::create_dir(&project).unwrap();
    let cache = root.script(
        "cache.sh",
        r#"[ -f "$FIXED" ] || exit 4
while :; do sleep 0.05; done"#,
    );
    root.write_config(&format!(
        "{FAST}projects = [\"{}\"]\n[[service]]\nname = \"cache\"\ntype = \"per-project\"\ncommand = [\"sh\", \"{}\"]\nenv = {{ FIXED = \"{}\" }}\nstart-period = \"300ms\"\nrestart = {{ base = \"0s\", max = \"0s\", attempts = 1 }}\n{}",
        project.display(),
        cache.display(),
        root.file("fixed").display(),
        project_service(&root, "app", "cache"),
    ));
    root.up();
    let mut why = String::new();
    wait_until(WAIT, "app's reason hints a restart", || {
        let r = project_record(&root, &project, "app");
        why = r["metadata"]["waiting"].as_str().unwrap_or_default().into();
        if why.contains("psm restart") {
            Ok(())
        } else {
            Err(r)
        }
    });
    let hint = why
        .split('`')
        .find(|s| s.starts_with("psm restart"))
        .unwrap_or_else(|| panic!("no command in {why}"));
    let words = shlex::split(hint).unwrap_or_else(|| panic!("not shell words: {hint}"));
    std::fs::write(root.file("fixed"), "").unwrap();
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    root.ok(&args);
    wait_until(WAIT, "app running", || {
        let r = project_record(&root, &project, "app");
        if r["status"] == "running" {
            Ok(())
        } else {
            Err(r)
        }
    });
}

/// `psm stop db` names the dependents it stopped so that two projects with
/// the same directory name are told apart.
#[test]
fn a_stop_names_dependents_of_same_named_projects_apart() {
    let root = Root::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = (a.path().join("proj"), b.path().join("proj"));
    std::fs::create_dir(&pa).unwrap();
    std::fs::create_dir(&pb).unwrap();
    root.write_config(&format!(
        "{FAST}projects = [\"{}\", \"{}\"]\n{}{}",
        pa.display(),
        pb.display(),
        service(&root, "db", ""),
        project_service(&root, "app", "db"),
    ));
    root.up();
    wait_for(WAIT, "db and both apps started", || order(&root).len() == 3);
    let said = root.ok(&["stop", "db"]);
    for p in [&pa, &pb] {
        assert!(said.contains(&p.display().to_string()), "{said}");
    }
}

/// A dependency whose probe passes as soon as it runs releases its
/// dependent at once, not on the next health round: with a 10 min interval
/// (rounds aligned to its multiples, so the old code had a ~2 % chance of
/// passing), web runs within a few seconds (a starting run is probed right after its
/// spawn and then often until it is ready).
#[test]
fn a_starting_dependency_is_probed_often_until_ready() {
    let root = Root::new();
    let db = root.script(
        "db.sh",
        r#"touch ready
while :; do sleep 0.05; done"#,
    );
    root.write_config(&format!(
        "health-interval = \"10m\"\n[[service]]\nname = \"db\"\ntype = \"global\"\ncommand = [\"sh\", \"{}\"]\nhealth = {{ file = \"ready\", max-age = \"1h\" }}\nstart-period = \"1h\"\n{}",
        db.display(),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    // Far under the 10 min a round may take; generous for a loaded machine.
    wait_status_within(&root, "web", "running", Duration::from_secs(10));
    assert_eq!(root.global("db")["status"], "running");
}

fn wait_status_within(root: &Root, name: &str, status: &str, limit: Duration) {
    wait_until(limit, &format!("{name} {status}"), || {
        let r = root.global(name);
        if r["status"] == status {
            Ok(())
        } else {
            Err(r)
        }
    });
}

/// A reload that replaces a dependency (its command changed) restarts the
/// dependents that `restart-with` it once the replacement is ready, as any
/// new ready run of it does; the others keep their process.
#[test]
fn a_reload_replacing_a_dependency_restarts_its_restart_with_dependents() {
    let root = Root::new();
    let config = |db_extra: &str| {
        format!(
            "{FAST}{}{}{}",
            service(&root, "db", db_extra),
            service(
                &root,
                "web",
                "depends-on = [\"db\"]\nrestart-with = [\"db\"]"
            ),
            service(&root, "api", "depends-on = [\"db\"]"),
        )
    };
    root.write_config(&config(""));
    root.up();
    let (db, web, api) = (
        root.service_pid("db"),
        root.service_pid("web"),
        root.service_pid("api"),
    );
    // A changed `env` replaces db's instance.
    root.write_config(&config("env = { CHANGED = \"1\" }"));
    root.ok(&["reload"]);
    wait_for(WAIT, "db replaced and web restarted with it", || {
        let now = (pid_of(&root.global("db")), pid_of(&root.global("web")));
        // The new processes may be recorded before their script has
        // written its line: wait for the lines too.
        let starts = |what: &str| order(&root).iter().filter(|l| *l == what).count();
        matches!(now, (Some(d), Some(w)) if d != db && w != web && alive(d) && alive(w))
            && starts("db start") == 2
            && starts("web start") == 2
    });
    let order = order(&root);
    let db_again = order.iter().rposition(|l| l == "db start").unwrap();
    let web_again = order.iter().rposition(|l| l == "web start").unwrap();
    assert!(db_again < web_again, "{order:?}");
    assert_eq!(pid_of(&root.global("api")), Some(api));
    assert_eq!(order.iter().filter(|l| *l == "api start").count(), 1);
}

/// A printing command whose reader has gone (`psm status | head -1` once
/// head exits) ends quietly: no panic, nothing on stderr, and not a failure
/// exit of its own (killed by SIGPIPE, as `cat` and `ls` are, or exit 0).
#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let root = Root::new();
    root.write_config(&format!(
        "{FAST}{}{}",
        service(&root, "db", ""),
        service(&root, "web", "depends-on = [\"db\"]"),
    ));
    root.up();
    wait_status(&root, "web", "running");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "web"],
        &["logs", "web"],
        &["verify"],
    ] {
        let mut child = root
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The read end closed before psm writes: its first write fails.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}

/// The coordinator, started by a command that no longer ignores SIGPIPE,
/// still ignores it: a control client that hangs up mid-reply must not
/// kill it.
#[cfg(target_os = "linux")]
#[test]
fn the_coordinator_still_ignores_sigpipe() {
    let root = Root::new();
    root.write_config(FAST);
    let pid = root.up();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{status}");
}
