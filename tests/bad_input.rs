//! Every bad input gets one clear line on stderr, a non-zero exit, and leaves
//! the registry exactly as it was.

mod support;

use support::{stderr, Root};

/// A root holding one record, so "unchanged" is a real comparison.
fn populated() -> (Root, support::Sleeper) {
    let root = Root::new();
    let child = root.sleeper();
    root.ok(&[
        "register",
        "web",
        &child.id().to_string(),
        "global",
        "web.js",
    ]);
    (root, child)
}

/// Runs psm and asserts: exit `code`, exactly one stderr line containing
/// `message`, registry bytes unchanged.
fn rejects(root: &Root, args: &[&str], code: i32, message: &str) {
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    let before = text(root.registry_bytes());
    let out = root.psm(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "psm {args:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "psm {args:?} must say one line, said: {err}"
    );
    assert!(err.starts_with("psm: "), "{err}");
    assert!(
        err.contains(message),
        "psm {args:?}: expected '{message}' in: {err}"
    );
    assert_eq!(
        text(root.registry_bytes()),
        before,
        "psm {args:?} changed the registry"
    );
}

/// Usage errors: bad names, types, pids, missing or bad owners, exit 2.
#[test]
fn usage_errors_exit_2_and_change_nothing() {
    let (root, child) = populated();
    let pid = child.id().to_string();
    let dir = root.path().display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["register", "x", &pid, "bogus", "s"],
            "unknown type 'bogus'",
        ),
        (
            vec!["register", "a b", &pid, "global", "s"],
            "invalid service name 'a b'",
        ),
        (
            vec!["register", "a/b", &pid, "global", "s"],
            "invalid service name",
        ),
        (
            vec!["register", ".hidden", &pid, "global", "s"],
            "invalid service name",
        ),
        (vec!["register", "x", "0", "global", "s"], "invalid pid '0'"),
        (vec!["register", "x", "1", "global", "s"], "invalid pid '1'"),
        (
            vec!["register", "x", "-1", "global", "s"],
            "invalid pid '-1'",
        ),
        (
            vec!["register", "x", "abc", "global", "s"],
            "invalid pid 'abc'",
        ),
        (
            vec!["register", "x", &pid, "per-project", "s"],
            "needs --project",
        ),
        (
            vec![
                "register",
                "x",
                &pid,
                "per-project",
                "s",
                "--project",
                "rel/dir",
            ],
            "not absolute",
        ),
        (
            vec![
                "register",
                "x",
                &pid,
                "per-project",
                "s",
                "--project",
                "/no/such/psm-dir",
            ],
            "does not exist",
        ),
        (
            vec!["register", "x", &pid, "per-session", "s"],
            "needs --session",
        ),
        (
            vec![
                "register",
                "x",
                &pid,
                "per-session",
                "s",
                "--session",
                "bad id",
            ],
            "invalid session id",
        ),
        (
            vec!["register", "x", &pid, "global", "s", "--meta", "novalue"],
            "invalid metadata",
        ),
        (
            vec!["register", "x", &pid],
            "required arguments were not provided",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec!["get", "web", "global", "--bogus-flag"],
            "unexpected argument",
        ),
        (
            vec!["session", "register", "s", "1", &dir],
            "invalid pid '1'",
        ),
        (
            vec!["session", "register", "bad/id", &pid, &dir],
            "invalid session id",
        ),
        (
            vec!["session", "register", "s", &pid, "relative"],
            "not absolute",
        ),
        (
            vec!["session", "spawn", "x", "--session", "s"],
            "required arguments were not provided",
        ),
        (
            vec![
                "session",
                "spawn",
                "bad name",
                "--session",
                "s",
                "--",
                "true",
            ],
            "invalid service name",
        ),
    ];
    for (args, message) in cases {
        rejects(&root, &args, 2, message);
    }
}

/// Failures: dead pids, unknown records, exit 1.
#[test]
fn failures_exit_1_and_change_nothing() {
    let (root, child) = populated();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id().to_string();
    dead.wait().unwrap();
    let dir = root.path().display().to_string();
    rejects(
        &root,
        &["register", "x", &dead_pid, "global", "s"],
        1,
        "is not a running process",
    );
    rejects(
        &root,
        &["unregister", "nope", "global"],
        1,
        "nope (global) is not registered",
    );
    rejects(&root, &["get", "nope", "global"], 1, "not registered");
    rejects(&root, &["refresh", "nope", "global"], 1, "not registered");
    rejects(
        &root,
        &["session", "register", "s", &dead_pid, &dir],
        1,
        "is not a running process",
    );
    rejects(
        &root,
        &["session", "cleanup", "nosuch"],
        1,
        "session nosuch is not registered",
    );
    rejects(
        &root,
        &["session", "spawn", "x", "--session", "NOPE", "--", "true"],
        1,
        "session NOPE is not registered or has ended",
    );
    root.ok(&["session", "register", "s", &child.id().to_string(), &dir]);
    rejects(
        &root,
        &[
            "session",
            "spawn",
            "x",
            "--session",
            "s",
            "--",
            "/no/such/program",
        ],
        1,
        "cannot start '/no/such/program'",
    );
}

/// A root that is missing or is not a directory is named, with what to do.
#[test]
fn bad_roots_are_named() {
    let root = Root::new();
    let file = root.file("plain-file");
    std::fs::write(&file, "x").unwrap();
    for (path, message) in [
        (file.display().to_string(), "is not a directory"),
        (root.file("missing").display().to_string(), "does not exist"),
    ] {
        let out = std::process::Command::new(support::PSM)
            .args(["--root", &path, "status"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(message), "{err}");
    }
    assert!(
        !root.file("missing").exists(),
        "a missing root must not be created"
    );
}

/// A corrupt registry is never treated as empty: reads and writes fail naming
/// the file and the parse error, the file stays byte for byte, and a write
/// attempt keeps a copy aside.
#[test]
fn corrupt_registry_is_kept_and_reported() {
    let (root, child) = populated();
    let garbage = b"{\"version\": \"3.0.0\", \"services\": {\"global\": {\"web\": ";
    std::fs::write(root.registry_path(), garbage).unwrap();
    let pid = child.id().to_string();
    rejects(&root, &["status"], 1, "is corrupt");
    rejects(
        &root,
        &["register", "x", &pid, "global", "s"],
        1,
        "a copy was kept at",
    );
    rejects(
        &root,
        &["cleanup"],
        1,
        ".live-process-registry.json is corrupt (EOF while parsing",
    );
    assert_eq!(root.registry_bytes().unwrap(), garbage);
    let copies: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(!copies.is_empty());
    assert!(copies.iter().all(|c| c == garbage));
}
