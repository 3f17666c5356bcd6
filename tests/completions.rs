//! Shell completion and the man page: the completion script really completes
//! in bash (subcommands, and service names from the root's psm.toml), and
//! the man page documents every command.

mod support;

use std::process::Command;

use support::{Root, PSM};

/// Runs bash with psm's completion script loaded, completes `words` (the
/// last one is the word under the cursor) in `root`, and returns COMPREPLY.
fn complete_in_bash(root: &Root, words: &[&str]) -> Vec<String> {
    let script = Command::new(PSM)
        .args(["completions", "bash"])
        .output()
        .expect("run psm completions");
    assert!(script.status.success(), "{script:?}");
    let script_path = root.file("psm.bash");
    std::fs::write(&script_path, &script.stdout).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let current = words.last().unwrap();
    let previous = words[words.len() - 2];
    let driver = format!(
        r#"source '{script}'
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_TYPE=9
_clap_complete_psm psm '{current}' '{previous}'
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script_path.display(),
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(driver)
        .current_dir(root.path())
        .env_remove("PSM_ROOT")
        .env_remove("CODING_REPO")
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{out:?}");
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    got.sort();
    got
}

/// Bash completes subcommands, and a service argument from the psm.toml of
/// the root the shell is in.
#[test]
fn bash_completes_commands_and_configured_service_names() {
    let root = Root::new();
    root.write_config(
        r#"[[service]]
name = "web"
type = "global"
command = ["sleep", "1"]

[[service]]
name = "worker"
type = "global"
command = ["sleep", "1"]

[[service]]
name = "db"
type = "global"
command = ["sleep", "1"]
"#,
    );
    let commands = complete_in_bash(&root, &["psm", "sta"]);
    assert!(
        commands.contains(&"start".to_string()) && commands.contains(&"status".to_string()),
        "{commands:?}"
    );
    assert_eq!(
        complete_in_bash(&root, &["psm", "restart", "w"]),
        ["web", "worker"]
    );
    assert_eq!(complete_in_bash(&root, &["psm", "logs", "d"]), ["db"]);
}

/// Without a config (or with a broken one) a service argument offers no
/// names (only the command's flags) and completion does not fail.
#[test]
fn completion_without_a_config_offers_nothing_and_does_not_fail() {
    let root = Root::new();
    let only_flags = |got: Vec<String>| {
        assert!(got.iter().all(|c| c.starts_with('-')), "{got:?}");
    };
    only_flags(complete_in_bash(&root, &["psm", "stop", ""]));
    root.write_config("this is not toml [");
    only_flags(complete_in_bash(&root, &["psm", "stop", ""]));
    assert!(complete_in_bash(&root, &["psm", "stop", "w"]).is_empty());
}

/// The man page is roff naming every subcommand, and needs no root.
#[test]
fn man_page_lists_every_command() {
    let out = Command::new(PSM)
        .args(["--root", "/nonexistent/psm-root", "man"])
        .output()
        .expect("run psm man");
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH psm 1"),
        "{page}"
    );
    for command in [
        "register", "status", "session", "up", "down", "watchdog", "verify",
    ] {
        assert!(page.contains(command), "man page lacks {command}");
    }
}
