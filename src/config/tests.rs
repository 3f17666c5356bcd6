use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use super::bounds::{Key, Range};
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
        depends_on: Vec::new(),
        restart_with: Vec::new(),
    };
    assert_eq!(config.services, vec![expected]);
}

fn service(name: &str, kind: &str, extra: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\ntype = \"{kind}\"\ncommand = [\"srv\"]\n{extra}\n")
}

#[test]
fn depends_on_resolves_in_scope() {
    let text = [
        service("db", "global", ""),
        service("cache", "per-project", ""),
        service("db", "per-project", ""),
        service(
            "web",
            "per-project",
            "depends-on = [\"db\", \"cache\"]\nrestart-with = [\"db\"]",
        ),
        service("api", "global", "depends-on = [\"db\"]"),
    ]
    .concat();
    let config = parse(&text).unwrap();
    let web = &config.services[3];
    assert_eq!(web.depends_on, ["db", "cache"]);
    assert_eq!(web.restart_with, ["db"]);
    let inst = web.instantiate(Path::new("/r"), Some(Path::new("/p")));
    let project = Scope::Project("/p".into());
    assert_eq!(
        inst.dependency_keys(&config.services),
        [
            ServiceKey::new("db", project.clone()),
            ServiceKey::new("cache", project)
        ]
    );
    let api = config.services[4].instantiate(Path::new("/r"), None);
    assert_eq!(
        api.dependency_keys(&config.services),
        [ServiceKey::global("db")]
    );
}

/// Each bad `depends-on` is one line naming file, line and key; nothing
/// else is accepted.
#[test]
fn depends_on_errors() {
    let long = "d".repeat(200);
    let cases: Vec<(String, usize, Vec<&str>)> = vec![
        (
            service("web", "global", "depends-on = [\"db\"]"),
            5,
            vec!["unknown service 'db'", "'depends-on'", "'web'"],
        ),
        (
            service("web", "global", "depends-on = [\"web\"]"),
            5,
            vec!["names the service itself", "'depends-on'"],
        ),
        (
            [
                service("a", "global", "depends-on = [\"b\"]"),
                service("b", "global", "depends-on = [\"c\"]"),
                service("c", "global", "depends-on = [\"a\"]"),
            ]
            .concat(),
            15,
            vec!["dependency cycle", "a → b → c → a", "'depends-on'"],
        ),
        (
            [
                service("db", "per-project", ""),
                service("web", "global", "depends-on = [\"db\"]"),
            ]
            .concat(),
            10,
            vec![
                "unknown service 'db'",
                "global service cannot depend on a per-project",
            ],
        ),
        (
            service("web", "global", &format!("depends-on = [\"{long}\"]")),
            5,
            vec!["'depends-on'"],
        ),
        (
            [
                service("db", "global", ""),
                service("web", "global", "depends-on = [\"db\", \"db\"]"),
            ]
            .concat(),
            10,
            vec!["twice"],
        ),
        (
            [
                service("db", "global", ""),
                service("web", "global", "restart-with = [\"db\"]"),
            ]
            .concat(),
            10,
            vec!["'restart-with'", "not in its 'depends-on'"],
        ),
    ];
    for (text, line, needles) in cases {
        assert_error(&text, Some(line), &needles);
    }
}

/// A chain of 1,000 services validates without recursion or a quadratic
/// walk per edge beyond the name lookup.
#[test]
fn long_dependency_chain() {
    let mut text = String::new();
    for i in 0..1000 {
        let deps = if i + 1 < 1000 {
            format!("depends-on = [\"s{}\"]", i + 1)
        } else {
            String::new()
        };
        text.push_str(&service(&format!("s{i}"), "global", &deps));
    }
    assert_eq!(parse(&text).unwrap().services.len(), 1000);
    text.push_str(&service("s1000", "global", "depends-on = [\"s0\"]"));
    text = text.replace(
        "name = \"s999\"\ntype = \"global\"\ncommand = [\"srv\"]\n\n",
        "name = \"s999\"\ntype = \"global\"\ncommand = [\"srv\"]\ndepends-on = [\"s1000\"]\n",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("dependency cycle"), "{err}");
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
            vec!["'port'", "[[service]] 'web'", "expected i64"],
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
            vec!["'port' = 0", "'health' of [[service]] 'web'", "1 to 65535"],
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
            vec!["'health-interval' = \"0s\"", "the top level", "10ms to 1h"],
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

/// Where a bounded key sits in a file: the text with `{}` for the value, the
/// line it lands on, and the table the message names.
fn placement(key: Key) -> Vec<(String, usize, String)> {
    let top = |k: &str| (format!("{k} = {{}}\n"), 1, "the top level".to_string());
    let table = |t: &str, k: &str| (format!("\n[{t}]\n{k} = {{}}\n"), 3, format!("[{t}]"));
    let service = |line: &str, within: &str| (web(line), 5, within.to_string());
    let name = key.name();
    match key {
        Key::HealthInterval => vec![top(name)],
        Key::RestartBase | Key::RestartMax | Key::RestartAttempts | Key::StableAfter => vec![
            table("restart", name),
            service(
                &format!("restart = {{ {name} = {{}} }}\n"),
                "'restart' of [[service]] 'web'",
            ),
        ],
        Key::LogMaxSize | Key::LogKeep => vec![table("logs", name)],
        Key::ControlIdleTimeout | Key::ControlMaxConnections => vec![table("control", name)],
        Key::StartPeriod | Key::StopTimeout => {
            vec![service(&format!("{name} = {{}}\n"), "[[service]] 'web'")]
        }
        Key::HealthPort => vec![service(
            "health = { port = {} }\n",
            "'health' of [[service]] 'web'",
        )],
        Key::HealthMaxAge => vec![service(
            "health = { file = \"/f\", max-age = {} }\n",
            "'health' of [[service]] 'web'",
        )],
    }
}

/// The values just inside and just outside a range, as TOML values.
fn edges(range: Range) -> (Vec<String>, Vec<String>) {
    let quoted = |d: Duration| format!("\"{}\"", humantime::format_duration(d));
    match range {
        Range::Duration { min, max } => {
            let mut outside = vec![quoted(max + Duration::from_millis(1))];
            if let Some(below) = min.checked_sub(Duration::from_nanos(1)) {
                outside.push(quoted(below));
            }
            (vec![quoted(min), quoted(max)], outside)
        }
        Range::Count { min, max } => (
            vec![min.to_string(), max.to_string()],
            vec![(min - 1).to_string(), (max + 1).to_string()],
        ),
    }
}

/// Every bounded key, in every table it may appear in: both ends of its
/// range are accepted, one step beyond either end is refused with one line
/// naming the file, the line, the key, the table and the allowed range.
#[test]
fn every_bound_is_enforced_where_the_key_appears() {
    for key in Key::ALL {
        let (inside, outside) = edges(key.range());
        for (template, line, within) in placement(key) {
            let with = |value: &str| template.replacen("{}", value, 1);
            for value in &inside {
                if let Err(e) = parse(&with(value)) {
                    panic!("{key:?} = {value} refused: {e}");
                }
            }
            for value in &outside {
                let range = key.range().to_string();
                let needles = [
                    format!("'{}' = {value}", key.name()),
                    format!("in {within} is out of range"),
                    format!("use a value from {range}"),
                ];
                let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
                assert_error(&with(value), Some(line), &needles);
            }
        }
    }
}

/// The values the issue reported, each refused with its range; a duration
/// too large even to parse names the key and humantime's reason.
#[test]
fn reported_absurd_values_are_refused() {
    let cases: &[(&str, &[&str])] = &[
        (
            "health-interval = \"1ns\"\n",
            &["'health-interval' = \"1ns\"", "10ms to 1h"],
        ),
        (
            "health-interval = \"99999999999d\"\n",
            &["'health-interval' = \"99999999999d\"", "10ms to 1h"],
        ),
        (
            "health-interval = \"99999999999999999999d\"\n",
            &["'health-interval'", "number is too large", "humantime"],
        ),
        (
            "[logs]\nkeep = 4294967295\n",
            &["'keep' = 4294967295 in [logs]", "0 to 100"],
        ),
        (
            "[logs]\nkeep = 99999999999999999999\n",
            &["'keep'", "[logs]"],
        ),
        (
            "[restart]\nattempts = 4294967296\n",
            &["'attempts' = 4294967296 in [restart]", "0 to 10000"],
        ),
    ];
    for (text, needles) in cases {
        let line = text.lines().count();
        assert_error(text, Some(line), needles);
    }
    // A huge value is echoed cut, on one line.
    let huge = format!("health-interval = \"{}d\"\n", "9".repeat(100_000));
    let message = parse(&huge).unwrap_err().to_string();
    assert!(message.len() < 600, "{} bytes", message.len());
}

/// Accepted edge values arrive unchanged in the config, in the types psm
/// keeps them in.
#[test]
fn bounded_values_are_kept() {
    let text = "health-interval = \"10ms\"\n[restart]\nbase = \"0s\"\nstable-after = \"0s\"\nattempts = 10000\n[logs]\nmax-size = 68719476736\nkeep = 100\n[control]\nmax-connections = 1\nidle-timeout = \"250ms\"\n";
    let config = parse(text).unwrap();
    assert_eq!(config.health_interval, Duration::from_millis(10));
    assert_eq!(config.restart.base, Duration::ZERO);
    assert_eq!(config.restart.stable_after, Duration::ZERO);
    assert_eq!(config.restart.attempts, 10_000);
    assert_eq!(config.logs.max_size, 64 << 30);
    assert_eq!(config.logs.keep, 100);
    assert_eq!(
        config.control,
        ControlPolicy {
            max_connections: 1,
            idle_timeout: Duration::from_millis(250)
        }
    );
    assert_eq!(Config::empty().control, ControlPolicy::default());
}

/// The README's config reference lists every bound with the same range.
#[test]
fn readme_lists_every_bound() {
    let readme = include_str!("../../README.md");
    for key in Key::ALL {
        let name = format!("`{}`", key.name());
        let range = key.range().to_string();
        assert!(
            readme
                .lines()
                .any(|l| l.starts_with('|') && l.contains(&name) && l.contains(&range)),
            "README has no bounds row with {name} and {range}"
        );
    }
}
