//! Scheduling the watchdog: a launchd LaunchAgent (macOS) or a systemd user
//! service + timer (Linux), one per root. The label and unit name carry a
//! hash of the root, so every root can have its own watchdog.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::paths::Paths;

/// Which scheduler's files to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Launchd,
    Systemd,
}

impl Format {
    /// launchd on macOS, systemd elsewhere.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") {
            Format::Launchd
        } else {
            Format::Systemd
        }
    }
}

/// A file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub path: PathBuf,
    pub contents: String,
}

/// The root's FNV-1a hash, cut to 32 bits: installed labels keep their names.
fn root_hash(root: &Path) -> String {
    format!("{:08x}", crate::paths::fnv1a(root) as u32)
}

/// `dev.psm.watchdog.<hash>` — the launchd label; also the systemd unit stem.
pub fn label(paths: &Paths) -> String {
    format!("dev.psm.watchdog.{}", root_hash(paths.root()))
}

fn systemd_stem(paths: &Paths) -> String {
    format!("psm-watchdog-{}", root_hash(paths.root()))
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Text for a unit-file setting: systemd expands `%` specifiers (`%h` the
/// home directory, `%n` the unit name, …) in nearly every setting, including
/// Description=, Environment= and ExecStart=, and refuses unknown ones, so a
/// root like `/tmp/50% off` must be written `50%% off`.
fn systemd_text(s: &str) -> String {
    s.replace('%', "%%")
}

/// One quoted word of Environment=: specifiers escaped, and C escapes for
/// the backslash (systemd unquotes it); a path with a quote or a newline is
/// refused below.
fn systemd_quote(s: &str) -> String {
    format!("\"{}\"", systemd_text(&s.replace('\\', "\\\\")))
}

/// One quoted word of ExecStart=, which also expands `$VAR` and `${VAR}`:
/// `$` is doubled so a root like `/tmp/$HOME` stays itself.
fn systemd_exec_word(s: &str) -> String {
    systemd_quote(s).replace('$', "$$")
}

/// The files that schedule `exe --root <root> watchdog` every `interval`.
pub fn render(
    format: Format,
    exe: &Path,
    paths: &Paths,
    interval: Duration,
    home: &Path,
) -> anyhow::Result<Vec<UnitFile>> {
    if !exe.is_absolute() {
        bail!("the psm path {} is not absolute", exe.display());
    }
    let secs = interval.as_secs().max(1);
    let root = paths.root().display().to_string();
    let exe_s = exe.display().to_string();
    let path_env = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    match format {
        Format::Launchd => {
            let label = label(paths);
            let log = paths
                .logs_dir()
                .join("watchdog.launchd.log")
                .display()
                .to_string();
            let contents = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{label}</string>
  <key>ProgramArguments</key>
  <array>
    <string>{exe}</string>
    <string>--root</string>
    <string>{root}</string>
    <string>watchdog</string>
  </array>
  <key>StartInterval</key>
  <integer>{secs}</integer>
  <key>RunAtLoad</key>
  <true/>
  <key>EnvironmentVariables</key>
  <dict>
    <key>PSM_ROOT</key>
    <string>{root}</string>
    <key>PATH</key>
    <string>{path}</string>
  </dict>
  <key>StandardOutPath</key>
  <string>{log}</string>
  <key>StandardErrorPath</key>
  <string>{log}</string>
</dict>
</plist>
"#,
                label = xml(&label),
                exe = xml(&exe_s),
                root = xml(&root),
                path = xml(&path_env),
                log = xml(&log),
            );
            Ok(vec![UnitFile {
                path: home
                    .join("Library/LaunchAgents")
                    .join(format!("{label}.plist")),
                contents,
            }])
        }
        Format::Systemd => {
            if [&exe_s, &root]
                .iter()
                .any(|s| s.contains('"') || s.contains('\n'))
            {
                bail!("paths with quotes or newlines cannot go into a systemd unit");
            }
            let stem = systemd_stem(paths);
            let dir = home.join(".config/systemd/user");
            let service = format!(
                "[Unit]\nDescription=psm watchdog for {text_root}\n\n[Service]\nType=oneshot\nEnvironment={env_root}\nEnvironment={env_path}\nExecStart={exe} --root {qroot} watchdog\n",
                text_root = systemd_text(&root),
                env_root = systemd_quote(&format!("PSM_ROOT={root}")),
                env_path = systemd_quote(&format!("PATH={path_env}")),
                exe = systemd_exec_word(&exe_s),
                qroot = systemd_exec_word(&root),
            );
            let timer = format!(
                "[Unit]\nDescription=Run the psm watchdog for {text_root} every {secs}s\n\n[Timer]\nOnBootSec={secs}s\nOnUnitActiveSec={secs}s\nAccuracySec=1s\nUnit={stem}.service\n\n[Install]\nWantedBy=timers.target\n",
                text_root = systemd_text(&root),
            );
            Ok(vec![
                UnitFile {
                    path: dir.join(format!("{stem}.service")),
                    contents: service,
                },
                UnitFile {
                    path: dir.join(format!("{stem}.timer")),
                    contents: timer,
                },
            ])
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the files and loads them into the scheduler.
pub fn install(format: Format, files: &[UnitFile], paths: &Paths) -> anyhow::Result<()> {
    for f in files {
        if let Some(dir) = f.path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&f.path, &f.contents).with_context(|| format!("writing {}", f.path.display()))?;
    }
    match format {
        Format::Launchd => {
            let uid = nix::unistd::getuid().as_raw();
            // Replacing an agent that is already loaded: bootout first.
            let _ = Command::new("launchctl")
                .args(["bootout", &format!("gui/{uid}/{}", label(paths))])
                .output();
            run(Command::new("launchctl")
                .arg("bootstrap")
                .arg(format!("gui/{uid}"))
                .arg(&files[0].path))
        }
        Format::Systemd => {
            run(Command::new("systemctl").args(["--user", "daemon-reload"]))?;
            run(Command::new("systemctl")
                .args(["--user", "enable", "--now"])
                .arg(format!("{}.timer", systemd_stem(paths))))
        }
    }
}

/// Unloads and removes the files; returns the files removed.
pub fn uninstall(format: Format, paths: &Paths, home: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = installed_files(format, paths, home);
    match format {
        Format::Launchd => {
            let uid = nix::unistd::getuid().as_raw();
            let _ = Command::new("launchctl")
                .args(["bootout", &format!("gui/{uid}/{}", label(paths))])
                .output();
        }
        Format::Systemd => {
            let _ = Command::new("systemctl")
                .args(["--user", "disable", "--now"])
                .arg(format!("{}.timer", systemd_stem(paths)))
                .output();
        }
    }
    for f in &files {
        fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
    }
    Ok(files)
}

/// The scheduler files present for this root.
pub fn installed_files(format: Format, paths: &Paths, home: &Path) -> Vec<PathBuf> {
    let candidates = match format {
        Format::Launchd => vec![home
            .join("Library/LaunchAgents")
            .join(format!("{}.plist", label(paths)))],
        Format::Systemd => {
            let dir = home.join(".config/systemd/user");
            let stem = systemd_stem(paths);
            vec![
                dir.join(format!("{stem}.service")),
                dir.join(format!("{stem}.timer")),
            ]
        }
    };
    candidates.into_iter().filter(|p| p.exists()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_and_differ_per_root() {
        let a = Paths::new("/home/u/a");
        let b = Paths::new("/home/u/b");
        assert_eq!(label(&a), label(&Paths::new("/home/u/a")));
        assert_ne!(label(&a), label(&b));
        assert!(label(&a).starts_with("dev.psm.watchdog."));
    }

    #[test]
    fn launchd_escapes_and_systemd_carries_the_interval() {
        let paths = Paths::new("/home/u/a&b");
        let home = Path::new("/home/u");
        let plist = render(
            Format::Launchd,
            Path::new("/usr/bin/psm"),
            &paths,
            Duration::from_secs(60),
            home,
        )
        .unwrap();
        assert!(plist[0].contents.contains("/home/u/a&amp;b"));
        assert!(plist[0].contents.contains("<integer>60</integer>"));
        let units = render(
            Format::Systemd,
            Path::new("/usr/bin/psm"),
            &paths,
            Duration::from_secs(90),
            home,
        )
        .unwrap();
        assert!(units[1].contents.contains("OnUnitActiveSec=90s"));

        // Specifiers, `$` and backslashes in the root stay themselves.
        let odd = Paths::new("/tmp/50% off/$HOME/a\\b %h");
        let units = render(
            Format::Systemd,
            Path::new("/usr/bin/psm"),
            &odd,
            Duration::from_secs(60),
            home,
        )
        .unwrap();
        let service = &units[0].contents;
        for line in [
            "Description=psm watchdog for /tmp/50%% off/$HOME/a\\b %%h",
            "Environment=\"PSM_ROOT=/tmp/50%% off/$HOME/a\\\\b %%h\"",
            "ExecStart=\"/usr/bin/psm\" --root \"/tmp/50%% off/$$HOME/a\\\\b %%h\" watchdog",
        ] {
            assert!(
                service.lines().any(|l| l == line),
                "no {line:?} in:\n{service}"
            );
        }
        assert!(units[1]
            .contents
            .contains("for /tmp/50%% off/$HOME/a\\b %%h every"));
        assert!(render(
            Format::Systemd,
            Path::new("psm"),
            &paths,
            Duration::from_secs(60),
            home
        )
        .is_err());
    }
}
