//! Property tests over psm's three parsers of untrusted input (issue 9,
//! "Done when"): the registry file, `psm.toml`, and the control protocol.
//! For any input: no panic, no hang, and an error is one line of bounded
//! length; what parses satisfies the invariants the rest of psm relies on
//! (the registry round-trips without loss, every config value is inside its
//! bound, a request survives the wire).
//!
//! `cargo test` runs a bounded number of cases (proptest's default 256 per
//! property, fewer for the live socket); a longer run is
//! `PROPTEST_CASES=100000 cargo test --release --test properties`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use psm::config::bounds::{Key, Range};
use psm::config::{Config, HealthSpec};
use psm::coordinator::protocol::{parse_request, Request, Response, Target};
use psm::paths::Paths;
use psm::registry::{Registry, Store};
use serde_json::{json, Map, Value};
use support::Root;

/// The longest error line any parser may produce for any input: the values
/// it echoes are cut (input::shown), so this holds however large the input.
const MAX_ERROR: usize = 1024;

/// Each case's deadline: far beyond any real parse, so only a hang trips it.
const CASE_TIMEOUT_MS: u32 = 20_000;

/// Parsers run each case in a forked child with a deadline, so a hang is
/// found (and shrunk) rather than stalling the suite.
fn parser_config() -> ProptestConfig {
    ProptestConfig {
        timeout: CASE_TIMEOUT_MS,
        ..ProptestConfig::default()
    }
}

#[track_caller]
fn assert_one_line(what: &str, message: &str) {
    assert!(!message.contains('\n'), "{what}: not one line: {message:?}");
    assert!(!message.is_empty(), "{what}: empty error");
    assert!(
        message.len() <= MAX_ERROR,
        "{what}: {} bytes: {}…",
        message.len(),
        &message[..message
            .char_indices()
            .nth(200)
            .map_or(message.len(), |(i, _)| i)]
    );
}

// ---------------------------------------------------------------------------
// Generators.

/// Strings with the characters that break naive code: quotes, escapes,
/// newlines, terminal escapes, NUL, non-ASCII, and sometimes a lot of them.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9._@-]{0,12}",
        2 => any::<String>(),
        1 => prop::collection::vec(
            prop::sample::select(vec![
                "\"", "'", "\\", "\n", "\r", "\u{1b}[2J", "\0", "%", "$", "{", "}", "[", "]",
                "=", "#", "ä", "\u{202e}", " ", "x",
            ]),
            0..40
        )
        .prop_map(|parts| parts.concat()),
        1 => (1usize..5000).prop_map(|n| "y".repeat(n)),
    ]
}

/// Integers around the edges that break arithmetic and conversions.
fn edgy_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => -3i64..100_000,
        1 => prop::sample::select(vec![
            i64::MIN, -1, 0, 1, 255, 256, 65_535, 65_536, 4_294_967_295, 4_294_967_296,
            i64::MAX,
        ]),
        1 => any::<i64>(),
    ]
}

/// JSON values shaped like a registry at random depths: the keys it has
/// (and some it does not), values of the right and of the wrong types.
fn registry_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "version",
            "lastChange",
            "sessions",
            "services",
            "global",
            "projects",
            "pid",
            "script",
            "type",
            "startTime",
            "lastHealthCheck",
            "status",
            "metadata",
            "pidStartTime",
            "restartCount",
            "pgid",
            "projectPath",
            "sessionId",
            "web",
            "/abs/project",
            "s-1",
            "unknownField",
        ])
        .prop_map(str::to_string),
        nasty_string(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        edgy_int().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A plausible registry with random records, then one random value planted
/// at a random place, so most cases are near-valid.
fn near_registry() -> impl Strategy<Value = Value> {
    let record = (edgy_int(), nasty_string(), registry_json(), any::<u64>()).prop_map(
        |(pid, status, metadata, start)| {
            json!({ "pid": pid, "script": "s", "type": "global", "startTime": start,
                    "lastHealthCheck": start, "status": status, "metadata": metadata })
        },
    );
    (
        prop::collection::btree_map(nasty_string(), record, 0..4),
        prop::sample::select(vec![
            "/version",
            "/lastChange",
            "/sessions",
            "/services",
            "/services/global",
            "/services/projects",
            "/extra",
            "/services/sessions",
        ]),
        registry_json(),
        any::<bool>(),
    )
        .prop_map(|(global, at, planted, plant)| {
            let mut v = json!({ "version": "3.0.0", "lastChange": 1, "sessions": {},
                                "services": { "global": global, "projects": {}, "sessions": {} } });
            if plant {
                if let Some(slot) = v.pointer_mut(at) {
                    *slot = planted;
                } else if let Some(map) = v.as_object_mut() {
                    map.insert("extra".into(), planted);
                }
            }
            v
        })
}

/// One TOML value of any kind a key might be given.
fn toml_value() -> impl Strategy<Value = String> {
    let duration = prop_oneof![
        prop::sample::select(vec![
            "0s",
            "1ns",
            "10ms",
            "9ms",
            "1h",
            "1day",
            "25h",
            "99999999999d",
            "99999999999999999999d",
            "5 parsecs",
            "",
            "-1s",
            "1.5s",
        ])
        .prop_map(str::to_string),
        (
            any::<u64>(),
            prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "y"])
        )
            .prop_map(|(n, unit)| format!("{n}{unit}")),
    ];
    prop_oneof![
        3 => duration.prop_map(|d| format!("{d:?}")),
        3 => edgy_int().prop_map(|n| n.to_string()),
        1 => Just("99999999999999999999".to_string()),
        2 => nasty_string().prop_map(|s| format!("{s:?}")),
        1 => prop::collection::vec(nasty_string(), 0..3).prop_map(|v| format!("{v:?}")),
        1 => (edgy_int(), nasty_string()).prop_map(|(n, s)| format!("{{ port = {n}, host = {s:?} }}")),
        1 => duration_or_garbage_inline(),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => nasty_string(),
    ]
}

fn duration_or_garbage_inline() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "base",
            "max",
            "attempts",
            "stable-after",
            "file",
            "max-age",
            "probe",
        ]),
        edgy_int(),
    )
        .prop_map(|(k, n)| format!("{{ {k} = {n} }}"))
}

/// A psm.toml of random headers and `key = value` lines, keys mostly real.
fn config_text() -> impl Strategy<Value = String> {
    let header = prop::sample::select(vec![
        "[restart]",
        "[logs]",
        "[control]",
        "[[service]]",
        "[bogus]",
        "[service]",
    ])
    .prop_map(str::to_string);
    let key = prop_oneof![
        8 => prop::sample::select(vec![
            "health-interval", "projects", "base", "max", "attempts", "stable-after",
            "max-size", "keep", "max-connections", "idle-timeout", "name", "type", "command",
            "cwd", "env", "health", "start-period", "stop-signal", "stop-timeout", "restart",
            "kind", "options",
        ])
        .prop_map(str::to_string),
        1 => nasty_string(),
    ];
    let service = (
        nasty_string(),
        prop::sample::select(vec!["global", "per-project", "per-session", "x"]),
    )
        .prop_map(|(name, ty)| {
            format!("[[service]]\nname = {name:?}\ntype = {ty:?}\ncommand = [\"sh\"]")
        });
    let line = prop_oneof![
        6 => (key, toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => header,
        2 => service,
        1 => nasty_string(),
    ];
    prop::collection::vec(line, 0..14).prop_map(|lines| lines.join("\n"))
}

/// A request (never `down`: the socket property shares one coordinator
/// across cases) naming targets the CLI would send, or any string at all.
fn request() -> impl Strategy<Value = Request> {
    let name = prop_oneof![3 => "[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", 1 => nasty_string()];
    let project = prop_oneof![2 => "(/[^\\x00-\\x1f\\x7f]{1,30}){1,4}", 1 => nasty_string()];
    let target = (name, proptest::option::of(project))
        .prop_map(|(service, project)| Target { service, project })
        .boxed();
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Reload),
        target.clone().prop_map(Request::Start),
        target.clone().prop_map(Request::Stop),
        target.prop_map(Request::Restart),
    ]
}

/// Bytes for the socket: request lines, garbage lines, invalid UTF-8,
/// partial lines, and now and then one over the line limit.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![
        4 => request().prop_map(|r| {
            let mut line = serde_json::to_vec(&r).unwrap();
            line.push(b'\n');
            line
        }),
        2 => prop::collection::vec(any::<u8>(), 0..200),
        2 => nasty_string().prop_map(|s| format!("{s}\n").into_bytes()),
        1 => Just(b"{\"cmd\":\"ping\"".to_vec()),
        1 => Just(vec![0xff, 0xfe, b'\n']),
        1 => (65_000usize..70_000).prop_map(|n| vec![b'x'; n]),
    ];
    prop::collection::vec(chunk, 1..6).prop_map(|c| c.concat())
}

// ---------------------------------------------------------------------------
// The registry file.

fn registry_store() -> &'static (tempfile::TempDir, Store) {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Paths::new(dir.path().to_path_buf()));
        (dir, store)
    })
}

/// Writes `bytes` as the registry and reads it the way every command does.
fn read_registry(bytes: &[u8]) -> Result<Registry, String> {
    let (_, store) = registry_store();
    std::fs::write(store.paths().registry(), bytes).unwrap();
    store.read().map_err(|e| e.to_string())
}

/// What parses keeps everything: written again and re-read, it is equal,
/// and so is its JSON (unknown fields included).
fn assert_round_trip(registry: &Registry) {
    let written = serde_json::to_vec(registry).unwrap();
    let again = read_registry(&written).expect("psm re-reads what it wrote");
    assert_eq!(&again, registry);
    assert_eq!(serde_json::to_vec(&again).unwrap(), written);
}

proptest! {
    #![proptest_config(parser_config())]

    /// Any bytes: a registry or one error line, never a panic or a hang.
    #[test]
    fn registry_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        match read_registry(&bytes) {
            Ok(registry) => assert_round_trip(&registry),
            Err(e) => assert_one_line("registry", &e),
        }
    }

    /// Registry-shaped JSON with wrong types in random places: parsed
    /// without loss, or refused in one line.
    #[test]
    fn registry_shaped_json(value in prop_oneof![registry_json(), near_registry()]) {
        match read_registry(&serde_json::to_vec(&value).unwrap()) {
            Ok(registry) => assert_round_trip(&registry),
            Err(e) => assert_one_line("registry", &e),
        }
    }
}

// ---------------------------------------------------------------------------
// psm.toml.

/// Every value a parsed config holds is inside its bound.
fn assert_within_bounds(config: &Config) {
    let duration = |key: Key, value: Duration| {
        assert!(
            key.check_duration(value).is_ok(),
            "{key:?} = {value:?} accepted"
        );
    };
    let count = |key: Key, value: i64| {
        assert!(key.check_count(value).is_ok(), "{key:?} = {value} accepted");
    };
    duration(Key::HealthInterval, config.health_interval);
    count(Key::LogMaxSize, config.logs.max_size as i64);
    count(Key::LogKeep, config.logs.keep.into());
    count(
        Key::ControlMaxConnections,
        config.control.max_connections.into(),
    );
    duration(Key::ControlIdleTimeout, config.control.idle_timeout);
    let restarts =
        std::iter::once(&config.restart).chain(config.services.iter().map(|s| &s.restart));
    for restart in restarts {
        duration(Key::RestartBase, restart.base);
        duration(Key::RestartMax, restart.max);
        count(Key::RestartAttempts, restart.attempts.into());
        duration(Key::StableAfter, restart.stable_after);
    }
    for spec in &config.services {
        duration(Key::StartPeriod, spec.start_period);
        duration(Key::StopTimeout, spec.stop_timeout);
        match &spec.health {
            Some(HealthSpec::Port { port, .. }) => count(Key::HealthPort, (*port).into()),
            Some(HealthSpec::File { max_age, .. }) => duration(Key::HealthMaxAge, *max_age),
            _ => {}
        }
        assert!(!spec.command[0].is_empty());
    }
}

fn check_config(text: &str) {
    let path = Path::new("/r/psm.toml");
    match Config::parse(text, path) {
        Ok(config) => assert_within_bounds(&config),
        Err(e) => {
            let message = e.to_string();
            assert_one_line("config", &message);
            assert!(message.starts_with("/r/psm.toml"), "{message}");
            if let Some(rest) = message.strip_prefix("/r/psm.toml line ") {
                let line: usize = rest.split(':').next().unwrap().parse().unwrap();
                assert!(
                    (1..=text.lines().count().max(1) + 1).contains(&line),
                    "{message}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(parser_config())]

    /// Any text: a config or one error line naming the file.
    #[test]
    fn config_any_text(text in any::<String>()) {
        check_config(&text);
    }

    /// Config-shaped text with real keys and edgy values: every accepted
    /// value is within its bound; every refusal is one line with a real line
    /// number.
    #[test]
    fn config_shaped_text(text in config_text()) {
        check_config(&text);
    }

    /// Each bounded key alone, at any value of its kind: accepted exactly
    /// when the bounds table says so.
    #[test]
    fn config_bounds_decide(index in 0..Key::ALL.len(), n in edgy_int(), ns in any::<u64>()) {
        let key = Key::ALL[index];
        let (value, inside) = match key.range() {
            Range::Duration { .. } => {
                let d = Duration::from_nanos(ns);
                (format!("\"{}\"", humantime::format_duration(d)), key.check_duration(d).is_ok())
            }
            Range::Count { .. } => (n.to_string(), key.check_count(n).is_ok()),
        };
        let name = key.name();
        let text = match key {
            Key::HealthInterval => format!("{name} = {value}"),
            Key::RestartBase | Key::RestartMax | Key::RestartAttempts | Key::StableAfter => {
                format!("[restart]\n{name} = {value}")
            }
            Key::LogMaxSize | Key::LogKeep => format!("[logs]\n{name} = {value}"),
            Key::ControlIdleTimeout | Key::ControlMaxConnections => format!("[control]\n{name} = {value}"),
            Key::StartPeriod | Key::StopTimeout => {
                format!("[[service]]\nname = \"w\"\ntype = \"global\"\ncommand = [\"x\"]\n{name} = {value}")
            }
            Key::HealthPort => {
                format!("[[service]]\nname = \"w\"\ntype = \"global\"\ncommand = [\"x\"]\nhealth = {{ port = {value} }}")
            }
            Key::HealthMaxAge => {
                format!("[[service]]\nname = \"w\"\ntype = \"global\"\ncommand = [\"x\"]\nhealth = {{ file = \"/f\", max-age = {value} }}")
            }
        };
        let parsed = Config::parse(&text, Path::new("/r/psm.toml"));
        prop_assert_eq!(parsed.is_ok(), inside, "{} -> {:?}", text, parsed.err().map(|e| e.to_string()));
    }
}

// ---------------------------------------------------------------------------
// The control protocol.

proptest! {
    #![proptest_config(parser_config())]

    /// Any line: a request, or a one-line error response.
    #[test]
    fn protocol_any_line(line in prop_oneof![any::<String>(), nasty_string()]) {
        if let Err(response) = parse_request(&line) {
            prop_assert!(!response.ok);
            assert_one_line("protocol", &response.message);
        }
    }

    /// Every request the CLI can send survives the wire unchanged; one
    /// naming what no config can hold (a bad name, a project path with
    /// control characters) is refused in one line.
    #[test]
    fn protocol_round_trip(req in request()) {
        let line = serde_json::to_string(&req).unwrap();
        prop_assert!(!line.contains('\n'));
        let sendable = match &req {
            Request::Start(t) | Request::Stop(t) | Request::Restart(t) => {
                psm::input::validate_name("service name", &t.service).is_ok()
                    && !t.project.as_deref().is_some_and(|p| p.contains(char::is_control))
            }
            _ => true,
        };
        match parse_request(&line) {
            Ok(parsed) => {
                prop_assert!(sendable, "accepted {line}");
                prop_assert_eq!(parsed, req);
            }
            Err(response) => {
                prop_assert!(!sendable, "refused {line}: {}", response.message);
                assert_one_line("protocol", &response.message);
            }
        }
    }
}

/// A root with a running coordinator for the socket property. One for all
/// its cases; the test owns it, so its drop ends the coordinator (a static
/// would never be dropped, and each run would leave one behind).
fn live_root() -> Root {
    let root = Root::new();
    root.script("svc.sh", "exec sleep 1000");
    root.write_config(
        "health-interval = \"100ms\"\n[control]\nidle-timeout = \"5s\"\n[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"sh\", \"svc.sh\"]\n",
    );
    root.up();
    root
}

fn socket_config() -> ProptestConfig {
    // The live socket costs a round trip per case: an eighth of the cases.
    let cases = (ProptestConfig::default().cases / 8).max(16);
    ProptestConfig::with_cases(cases)
}

/// Any bytes sent to a live coordinator: every reply is one JSON line
/// with a one-line message, the connection ends when the client's input
/// does (or at the first line too long), and the coordinator still
/// answers a ping afterwards.
#[test]
fn protocol_over_a_live_socket() {
    let root = live_root();
    let mut runner = proptest::test_runner::TestRunner::new(socket_config());
    let result = runner.run(&wire_bytes(), |bytes| {
        let socket = Paths::new(root.path().to_path_buf()).control_socket();
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        // The server may close early (a line too long): later writes may fail.
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut replies = 0;
        for line in BufReader::new(&stream).lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading replies: {e}"),
            };
            let response: Response =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            if !response.ok {
                assert_one_line("response", &response.message);
            }
            replies += 1;
        }
        prop_assert!(replies <= bytes.iter().filter(|b| **b == b'\n').count() + 1);
        let mut ping = UnixStream::connect(&socket).unwrap();
        ping.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        ping.write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&ping).read_line(&mut reply).unwrap();
        let reply: Response = serde_json::from_str(&reply).unwrap();
        prop_assert!(reply.ok, "{}", reply.message);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
