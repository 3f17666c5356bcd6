use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use super::*;
use crate::registry::{Scope, ServiceKey, ServiceType};

const FULL: &str = r#"health-interval = "15s"
projects = ["/abs/path"]
[restart]
base = "1s"
max = "30s"
attempts = 5
stable-after = "60s"
[logs]
max-size = 10485760
keep = 3
[[service]]
name = "web"
type = "global"
command = ["python3", "-m", "http.server", "8765"]
cwd = "."
env = { PORT = "8765" }
health = { port = 8765 }
start-period = "2s"
stop-signal = "TERM"
stop-timeout = "2s"
restart = { attempts = 3 }
kind = "daemon"
options = { a = 1 }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/r/psm.toml"))
}

/// A minimal valid service, for tests that vary one key.
fn web(extra: &str) -> String {
    format!("[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"srv\"]\n{extra}")
}

/// Asserts that `text` fails with a message naming the file, `line` and every
/// `needle`, on one line.
#[track_caller]
fn assert_error(text: &str, line: Option<usize>, needles: &[&str]) {
    let err = parse(text).expect_err("config should be rejected");
    let message = err.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    assert!(message.starts_with("/r/psm.toml"), "{message}");
    match line {
        Some(n) => assert!(message.contains(&format!(" line {n}: ")), "{message}"),
        None => assert!(!message.contains(" line "), "{message}"),
    }
    for needle in needles {
        assert!(message.contains(needle), "no {needle:?} in: {message}");
    }
    if let ConfigError::Invalid { line: got, .. } = err {
        assert_eq!(got, line, "{message}");
    }
}

/// An empty file means every default and no services.
#[test]
fn empty_file_gives_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.source.as_deref(), Some(Path::new("/r/psm.toml")));
    let expected = Config {
        source: config.source.clone(),
        ..Config::empty()
    };
    assert_eq!(config, expected);
    assert_eq!(config.health_interval, Duration::from_secs(15));
    assert_eq!(config.restart.attempts, 5);
    assert_eq!(config.restart.max, Duration::from_secs(30));
    assert_eq!(config.logs.max_size, 10 * 1024 * 1024);
    assert_eq!(config.logs.keep, 3);
    assert_eq!(Config::empty().source, None);
}

/// The documented example parses to exactly the values it spells out.
#[test]
fn full_example() {
    let config = parse(FULL).unwrap();
    assert_eq!(config.projects, vec![PathBuf::from("/abs/path")]);
    assert_eq!(config.restart, RestartPolicy::default());
    assert_eq!(config.logs, LogPolicy::default());
    let expected = ServiceSpec {
        name: "web".into(),
        service_type: ServiceType::Global,
        kind: "daemon".into(),
        command: ["python3", "-m", "http.server", "8765"]
            .map(String::from)
            .to_vec(),
        cwd: Some(".".into()),
        env: BTreeMap::from([("PORT".to_string(), "8765".to_string())]),
        health: Some(HealthSpec::Port {
            host: "127.0.0.1".into(),
            port: 8765,
        }),
        start_period: Duration::from_secs(2),
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(2),
        restart: RestartPolicy {
            attempts: 3,
            ..RestartPolicy::default()
        },
        options: json!({ "a": 1 }),
    };
    assert_eq!(config.services, vec![expected]);
}

/// Optional service keys take their documented defaults.
#[test]
fn service_defaults() {
    let config = parse(&web("")).unwrap();
    let spec = &config.services[0];
    assert_eq!(spec.kind, DEFAULT_KIND);
    assert_eq!(spec.cwd, None);
    assert_eq!(spec.health, None);
    assert_eq!(spec.start_period, Duration::ZERO);
    assert_eq!(spec.stop_signal, Signal::SIGTERM);
    assert_eq!(spec.stop_timeout, Duration::from_secs(2));
    assert_eq!(spec.restart, RestartPolicy::default());
    assert_eq!(spec.options, json!({}));
}

/// A service's `restart` overrides only the keys it names, over the
/// file's `[restart]`, not over the built-in defaults.
#[test]
fn restart_override_merges() {
    let text = format!(
        "[restart]\nbase = \"250ms\"\nattempts = 7\n{}",
        web("restart = { max = \"5s\", attempts = 2 }\n")
    ) + "[[service]]\nname = \"other\"\ntype = \"global\"\ncommand = [\"x\"]\n";
    let config = parse(&text).unwrap();
    let file = RestartPolicy {
        base: Duration::from_millis(250),
        attempts: 7,
        ..RestartPolicy::default()
    };
    assert_eq!(config.restart, file);
    assert_eq!(
        config.services[0].restart,
        RestartPolicy {
            max: Duration::from_secs(5),
            attempts: 2,
            ..file
        }
    );
    assert_eq!(config.services[1].restart, file);
}

/// The other health forms, their defaults, and extension kinds.
#[test]
fn health_forms_and_kinds() {
    let file = parse(&web(
        "health = { file = \"/tmp/hb\" }\nkind = \"vkb-kind\"\n",
    ))
    .unwrap();
    assert_eq!(
        file.services[0].health,
        Some(HealthSpec::File {
            path: "/tmp/hb".into(),
            max_age: Duration::from_secs(30)
        })
    );
    assert_eq!(file.services[0].kind, "vkb-kind");
    let probe = parse(&web(
        "health = { probe = \"http\", options = { path = \"/ok\" } }\nstop-signal = \"sigint\"\n",
    ))
    .unwrap();
    assert_eq!(
        probe.services[0].health,
        Some(HealthSpec::Probe {
            name: "http".into(),
            options: json!({ "path": "/ok" })
        })
    );
    assert_eq!(probe.services[0].stop_signal, Signal::SIGINT);
    let host = parse(&web("health = { port = 80, host = \"::1\" }\n")).unwrap();
    assert_eq!(
        host.services[0].health,
        Some(HealthSpec::Port {
            host: "::1".into(),
            port: 80
        })
    );
}

/// The same name is fine for different types, not within one type.
#[test]
fn names_are_unique_per_type() {
    let two_types =
        web("") + "[[service]]\nname = \"web\"\ntype = \"per-project\"\ncommand = [\"x\"]\n";
    assert_eq!(parse(&two_types).unwrap().services.len(), 2);
    let dup = web("") + "[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"x\"]\n";
    assert_error(&dup, Some(6), &["duplicate 'name'", "'web'", "line 2"]);
}

/// Every rejected input says file, line, key (and service) on one line.
#[test]
fn bad_inputs_name_file_line_and_key() {
    let cases: Vec<(String, Option<usize>, Vec<&str>)> = vec![
        // Schema errors reported by toml, reworded.
        (
            "helth = 1\n".into(),
            Some(1),
            vec!["unknown key 'helth'", "health-interval"],
        ),
        (
            web("helth = { port = 1 }\n"),
            Some(5),
            vec![
                "unknown key 'helth'",
                "[[service]] 'web'",
                "expected one of",
            ],
        ),
        (
            web("health = { prot = 1 }\n"),
            Some(5),
            vec!["unknown key 'prot'", "'health' of [[service]] 'web'"],
        ),
        (
            "[logs]\nkeep = 1\nsize = 2\n".into(),
            Some(3),
            vec!["unknown key 'size'", "[logs]", "max-size"],
        ),
        (
            "\n\nhealth-interval = \"5 parsecs\"\n".into(),
            Some(3),
            vec![
                "invalid duration '5 parsecs'",
                "'health-interval'",
                "\"250ms\"",
            ],
        ),
        (
            "[restart]\nbase = \"1s\"\nstable-after = \"soon\"\n".into(),
            Some(3),
            vec!["'stable-after'", "[restart]", "humantime"],
        ),
        (
            web("restart = { max = \"x\" }\n"),
            Some(5),
            vec![
                "invalid duration 'x'",
                "'max'",
                "'restart' of [[service]] 'web'",
            ],
        ),
        (
            web("stop-timeout = \"2 s s\"\n"),
            Some(5),
            vec!["'stop-timeout'", "[[service]] 'web'"],
        ),
        (
            web("health = { port = \"a\" }\n"),
            Some(5),
            vec!["'port'", "[[service]] 'web'", "u16"],
        ),
        (
            "[restart]\nattempts = -1\n".into(),
            Some(2),
            vec!["'attempts'", "[restart]"],
        ),
        (
            "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n".into(),
            Some(1),
            vec!["missing key 'type'", "[[service]] 'web'"],
        ),
        ("x = [\n".into(), Some(2), vec!["TOML syntax"]),
        // Semantic errors found after deserializing.
        (
            "[[service]]\nname = \"web\"\ntype = \"per-session\"\ncommand = [\"x\"]\n".into(),
            Some(3),
            vec![
                "per-session",
                "'type'",
                "[[service]] 'web'",
                "global or per-project",
            ],
        ),
        (
            "[[service]]\nname = \"web\"\ntype = \"local\"\ncommand = [\"x\"]\n".into(),
            Some(3),
            vec!["'type' 'local'", "[[service]] 'web'"],
        ),
        (
            "[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = []\n".into(),
            Some(4),
            vec!["empty 'command'", "[[service]] 'web'"],
        ),
        (
            "[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"\", \"a\"]\n".into(),
            Some(4),
            vec!["empty 'command'"],
        ),
        (
            "[[service]]\nname = \"we b\"\ntype = \"global\"\ncommand = [\"x\"]\n".into(),
            Some(2),
            vec!["'we b'", "'name'", "[[service]] #1"],
        ),
        (
            web("health = { port = 1, file = \"/f\" }\n"),
            Some(5),
            vec![
                "exactly one",
                "port and file",
                "'health'",
                "[[service]] 'web'",
            ],
        ),
        (
            web("health = { host = \"h\" }\n"),
            Some(5),
            vec!["exactly one", "found none", "'health'"],
        ),
        (
            web("health = { file = \"/f\", host = \"h\" }\n"),
            Some(5),
            vec!["'host'", "'health'", "only goes with 'port'"],
        ),
        (
            web("health = { port = 0 }\n"),
            Some(5),
            vec!["'port' 0", "[[service]] 'web'"],
        ),
        (
            web("\nstop-signal = \"BOGUS\"\n"),
            Some(6),
            vec![
                "unknown signal 'BOGUS'",
                "'stop-signal'",
                "[[service]] 'web'",
            ],
        ),
        (
            web("kind = \"bad kind\"\n"),
            Some(5),
            vec!["'bad kind'", "'kind'", "[[service]] 'web'"],
        ),
        (
            web("env = { \"A=B\" = \"1\" }\n"),
            Some(5),
            vec!["'A=B'", "'env'", "[[service]] 'web'"],
        ),
        (
            "# c\nprojects = [\"/a\",\n  \"rel/p\"]\n".into(),
            Some(3),
            vec!["'projects'", "'rel/p'", "absolute"],
        ),
        (
            "\nhealth-interval = \"0s\"\n".into(),
            Some(2),
            vec!["'health-interval'", "greater than 0"],
        ),
    ];
    for (text, line, needles) in cases {
        assert_error(&text, line, &needles);
    }
}

/// The error's line counts lines of the file, with services further down.
#[test]
fn second_service_errors_point_at_it() {
    let text = web("")
        + "\n[[service]]\nname = \"api\"\ntype = \"global\"\ncommand = [\"x\"]\ncolour = 1\n";
    assert_error(
        &text,
        Some(10),
        &["unknown key 'colour'", "[[service]] 'api'"],
    );
}

/// `load` distinguishes a missing file from a bad one.
#[test]
fn load_missing_and_present() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("psm.toml");
    assert!(matches!(Config::load(&path), Err(ConfigError::Missing(p)) if p == path));
    std::fs::write(&path, FULL).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.source, Some(path.clone()));
    assert_eq!(config.services.len(), 1);
}

/// Per-project instances expand placeholders and resolve cwd; global
/// instances are plain clones.
#[test]
fn instantiate_expands_and_resolves_cwd() {
    let text = r#"
[[service]]
name = "kb"
type = "per-project"
command = ["kb", "--dir", "{project}", "--name={project_name}"]
cwd = "{project}/sub"
env = { NAME = "{project_name}", PLAIN = "x" }
health = { file = "{project}/.hb" }
[[service]]
name = "rel"
type = "per-project"
command = ["x"]
cwd = "tools"
[[service]]
name = "dash"
type = "global"
command = ["dash", "{project}"]
"#;
    let config = parse(text).unwrap();
    let root = Path::new("/r");
    let project = Path::new("/code/proj");

    let kb = config.services[0].instantiate(root, Some(project));
    assert_eq!(
        kb.key,
        ServiceKey::new("kb", Scope::Project("/code/proj".into()))
    );
    assert_eq!(kb.label, "kb@proj");
    assert_eq!(
        kb.spec.command,
        ["kb", "--dir", "/code/proj", "--name=proj"]
    );
    assert_eq!(kb.spec.cwd.as_deref(), Some("/code/proj/sub"));
    assert_eq!(kb.cwd, Path::new("/code/proj/sub"));
    assert_eq!(kb.spec.env["NAME"], "proj");
    assert_eq!(kb.spec.env["PLAIN"], "x");
    assert!(
        matches!(&kb.spec.health, Some(HealthSpec::File { path, .. }) if path == "/code/proj/.hb")
    );

    let rel = config.services[1].instantiate(root, Some(project));
    assert_eq!(rel.cwd, Path::new("/r/tools"));
    let mut no_cwd = config.services[1].clone();
    no_cwd.cwd = None;
    assert_eq!(no_cwd.instantiate(root, Some(project)).cwd, project);

    let dash = config.services[2].instantiate(root, Some(project));
    assert_eq!(dash.key, ServiceKey::global("dash"));
    assert_eq!(dash.label, "dash");
    assert_eq!(dash.spec, config.services[2]);
    assert_eq!(dash.cwd, root);
}
