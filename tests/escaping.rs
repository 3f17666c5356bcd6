//! What psm writes for others to read says exactly what it means (issue 9
//! §7): a root with `%`, `$` and spaces survives into the systemd unit,
//! terminal escapes from the registry are printed escaped in the status
//! table (JSON stays exact), and an error echoing a huge argument is cut.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::{output_within, stderr, Root, PSM};

const LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Reads one quoted word the way systemd does for ExecStart= and
/// Environment=: C escapes inside quotes, then `%%` → `%`, and for ExecStart
/// `$$` → `$`. Panics on anything it does not know, so a change of quoting
/// cannot slip through.
fn systemd_words(value: &str, exec: bool) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(first) = chars.next() else {
            return words;
        };
        let mut word = String::new();
        if first == '"' {
            loop {
                match chars.next().expect("unbalanced quote") {
                    '"' => break,
                    '\\' => match chars.next().expect("escape at end") {
                        '\\' => word.push('\\'),
                        '"' => word.push('"'),
                        other => panic!("unexpected escape \\{other}"),
                    },
                    c => word.push(c),
                }
            }
        } else {
            word.push(first);
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                word.push(c);
            }
        }
        words.push(unspecify(&word, exec));
    }
}

/// Undoes specifier (and for ExecStart, variable) escaping; a lone `%` or
/// `$` would be expanded by systemd, so it fails the test.
fn unspecify(text: &str, exec: bool) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => assert_eq!(chars.next(), Some('%'), "a specifier in {text:?}"),
            '$' if exec => assert_eq!(chars.next(), Some('$'), "a variable in {text:?}"),
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A setting's value in a unit file's text.
fn setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// `psm watchdog install --systemd --dry-run` for a root named with `%`
/// (a known and an unknown specifier), `$HOME` and spaces: ExecStart,
/// Environment and Description carry the root exactly under systemd's
/// quoting rules, and `systemd-analyze verify` (where installed) accepts the
/// units without a warning.
#[test]
fn a_root_with_percent_dollar_and_spaces_survives_into_the_systemd_unit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("50% off %h %Z $HOME x");
    let home = dir.path().join("home");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&home).unwrap();
    let root = fs::canonicalize(&root).unwrap();
    let shown = root.display().to_string();
    let mut cmd = Command::new(PSM);
    cmd.arg("--root")
        .arg(&root)
        .args(["watchdog", "install", "--systemd", "--dry-run"])
        .env("HOME", &home)
        .env_remove("PSM_ROOT");
    let out = output_within(cmd, LIMIT, "install --dry-run");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    // Files follow `# <path>` lines.
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("# /") {
            Some(rest) => files.push((PathBuf::from(format!("/{rest}")), String::new())),
            None => {
                let (_, body) = files.last_mut().expect("a # <path> line first");
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert_eq!(files.len(), 2, "{text}");
    let (service_path, service) = &files[0];
    let (timer_path, timer) = &files[1];

    let exec = systemd_words(setting(service, "ExecStart")[0], true);
    assert_eq!(
        exec[1..],
        ["--root", shown.as_str(), "watchdog"],
        "{service}"
    );
    assert_eq!(Path::new(&exec[0]), Path::new(PSM));
    let env: Vec<String> = setting(service, "Environment")
        .iter()
        .flat_map(|v| systemd_words(v, false))
        .collect();
    assert!(env.contains(&format!("PSM_ROOT={shown}")), "{env:?}");
    let description = unspecify(setting(service, "Description")[0], false);
    assert_eq!(description, format!("psm watchdog for {shown}"));
    let description = unspecify(setting(timer, "Description")[0], false);
    assert_eq!(
        description,
        format!("Run the psm watchdog for {shown} every 60s")
    );

    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: checked by parsing rules only");
        return;
    };
    assert!(probe.status.success());
    let units = dir.path().join("units");
    fs::create_dir_all(&units).unwrap();
    let mut paths = Vec::new();
    for (path, body) in [(service_path, service), (timer_path, timer)] {
        let target = units.join(path.file_name().unwrap());
        fs::write(&target, body).unwrap();
        paths.push(target);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("specifier") && !said.contains(units.to_str().unwrap()),
        "systemd-analyze verify warned: {said}"
    );
}

/// Control characters and terminal escapes that another program wrote into
/// the registry are printed escaped in the `psm status` table, and exactly
/// in `--json`.
#[test]
fn status_prints_registry_escapes_escaped_and_json_exact() {
    let root = Root::new();
    let name = "evil\u{1b}[2J\u{1b}]0;pwned\u{7}";
    let status = "running\u{1b}[31m";
    let session = "s\u{1b}[1A\u{9b}2K";
    let project = "/p/\u{1b}[8mhidden\nline";
    let live = root.sleeper();
    let registry = json!({
        "version": "3.0.0",
        "lastChange": 1_760_456_472_581u64,
        "sessions": {
            session: { "pid": 99_999_999, "projectPath": project, "startTime": 1_760_456_400_000u64 }
        },
        "services": {
            "global": {
                name: {
                    "pid": live.id(), "script": "x", "type": "global",
                    "pidStartTime": support::start_time(live.id() as i32),
                    "startTime": 1_760_456_472_581u64, "lastHealthCheck": 1_760_456_472_581u64,
                    "status": status, "metadata": {}
                }
            },
            "projects": {},
            "sessions": {
                session: {
                    "tool": {
                        "pid": 99_999_999, "script": "y", "type": "per-session",
                        "sessionId": session, "startTime": 1, "lastHealthCheck": 1,
                        "status": "running", "metadata": {}
                    }
                }
            }
        }
    });
    fs::write(root.registry_path(), serde_json::to_vec(&registry).unwrap()).unwrap();

    let table = root.ok(&["status"]);
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal: {table:?}"
    );
    for escaped in [
        r"evil\u{1b}[2J\u{1b}]0;pwned\u{7}",
        r"running\u{1b}[31m",
        r"s\u{1b}[1A\u{9b}2K",
    ] {
        assert!(table.contains(escaped), "no {escaped} in:\n{table}");
    }

    let json: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    let names: Vec<&str> = json["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(names.contains(&name), "{names:?}");
    let statuses: Vec<&str> = json["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert!(statuses.contains(&status), "{statuses:?}");
    assert_eq!(json["sessions"][0]["id"], session, "{json}");
}

/// A 120 KB bad name is echoed cut to a short line, escapes and all, with
/// exit 2 and the registry untouched.
#[test]
fn an_error_echoing_a_huge_argument_is_cut() {
    let root = Root::new();
    let huge = format!("bad name\u{1b}[2J{}", "x".repeat(120 * 1024));
    for args in [
        vec!["get", huge.as_str(), "global"],
        vec!["register", huge.as_str(), "12345", "global", "s"],
        vec!["register", "web", huge.as_str(), "global", "s"],
        vec!["stop", huge.as_str()],
    ] {
        let out = root.psm(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{}", &err[..err.len().min(300)]);
        assert_eq!(err.lines().count(), 1, "{} bytes", err.len());
        assert!(err.len() < 1024, "{} bytes echoed", err.len());
        assert!(err.contains("bytes in all"), "{err}");
        assert!(!err.contains('\u{1b}'), "{err:?}");
        assert!(root.registry_bytes().is_none(), "registry written");
    }
}
