//! Validation of what users type: names, ids, pids, project paths.
//! Each error is one line that says what is wrong and what would be right,
//! and echoes the value through [`shown`]: escaped and cut, so a 120 KB
//! argument or one with a newline or a terminal escape in it cannot turn the
//! line into a screenful or drive the user's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("invalid {what} '{}': use 1-128 characters from A-Z a-z 0-9 . _ @ -, starting with a letter or digit", shown(.value))]
    Name { what: &'static str, value: String },
    #[error("invalid pid '{}': give the number of a running process (greater than 1)", shown(.0))]
    Pid(String),
    #[error("unknown type '{}': use global, per-project or per-session", shown(.0))]
    Type(String),
    #[error("type per-project needs --project DIR")]
    MissingProject,
    #[error("type per-session needs --session ID (or PSM_SESSION_ID in the environment)")]
    MissingSession,
    #[error("project path '{}' is not absolute: give the full path of the project directory", shown(.0))]
    RelativeProject(String),
    #[error("project directory '{}' does not exist (or is not a directory)", shown(.0))]
    MissingProjectDir(String),
    #[error("invalid metadata '{}': use KEY=VALUE", shown(.0))]
    Meta(String),
}

/// The most characters of a user's value that a message echoes: more than
/// the longest valid name (128), far less than a screen.
pub const SHOWN_CHARS: usize = 200;

/// `value` with every control character (C0, DEL, C1) and every bidi
/// override escaped Rust-style (`\n`, `\u{1b}`), so that printing it can
/// neither break a line nor reach the terminal as a command. Everything
/// else, including non-ASCII text, is kept as it is.
pub fn printable(value: &str) -> Cow<'_, str> {
    let hostile = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !value.contains(hostile) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if hostile(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `value` as an error message echoes it: [`printable`], and cut after
/// [`SHOWN_CHARS`] characters with the full length noted.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => printable(value).into_owned(),
        Some((end, _)) => format!(
            "{}… ({} bytes in all)",
            printable(&value[..end]),
            value.len()
        ),
    }
}

/// `[A-Za-z0-9][A-Za-z0-9._@-]{0,127}`: safe in file names, log names and
/// socket messages without quoting.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), InputError> {
    let ok_first = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok_first && ok_rest && value.len() <= 128 {
        Ok(())
    } else {
        Err(InputError::Name {
            what,
            value: value.to_string(),
        })
    }
}

/// Parses a pid psm may record or signal: a whole number greater than 1.
pub fn parse_pid(value: &str) -> Result<i32, InputError> {
    match value.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(InputError::Pid(value.to_string())),
    }
}

/// An existing project directory, absolute, in canonical form (so one
/// project never appears under two spellings).
pub fn canonical_project(value: &Path) -> Result<PathBuf, InputError> {
    let shown = value.display().to_string();
    if !value.is_absolute() {
        return Err(InputError::RelativeProject(shown));
    }
    match value.canonicalize() {
        Ok(p) if p.is_dir() => Ok(p),
        _ => Err(InputError::MissingProjectDir(shown)),
    }
}

/// Splits `KEY=VALUE`.
pub fn parse_meta(value: &str) -> Result<(String, String), InputError> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(InputError::Meta(value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "web", "vkb-server", "x.y_z@1", &"a".repeat(128)] {
            assert!(validate_name("name", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "ä", &"a".repeat(129), "a\n"] {
            assert!(validate_name("name", bad).is_err(), "{bad:?}");
        }
    }

    /// A huge value is cut, hostile characters escaped, plain text untouched;
    /// the message stays one line either way.
    #[test]
    fn shown_values() {
        let table: &[(&str, &str)] = &[
            ("web", "web"),
            ("ä-µ", "ä-µ"),
            ("a\nb", "a\\nb"),
            ("\u{1b}[2J", "\\u{1b}[2J"),
            ("x\u{9b}y", "x\\u{9b}y"),
            ("\u{202e}txt", "\\u{202e}txt"),
            ("tab\there", "tab\\there"),
        ];
        for (value, expected) in table {
            assert_eq!(shown(value), *expected, "{value:?}");
        }
        let huge = "ä".repeat(120 * 1024);
        let cut = shown(&huge);
        assert!(cut.starts_with(&"ä".repeat(SHOWN_CHARS)), "{cut}");
        assert!(cut.ends_with("… (245760 bytes in all)"), "{cut}");
        assert_eq!(
            cut.chars().count(),
            SHOWN_CHARS + "… (245760 bytes in all)".len() - 2
        );
        let exact = "a".repeat(SHOWN_CHARS);
        assert_eq!(shown(&exact), exact);
        let err = validate_name("service name", &format!("{}\n", "x".repeat(120 * 1024)))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 500 && !err.contains('\n'), "{err}");
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid("42"), Ok(42));
        for bad in ["0", "1", "-1", "x", "", "99999999999"] {
            assert!(parse_pid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn projects() {
        assert!(matches!(
            canonical_project(Path::new("rel")),
            Err(InputError::RelativeProject(_))
        ));
        assert!(matches!(
            canonical_project(Path::new("/no/such/dir/psm")),
            Err(InputError::MissingProjectDir(_))
        ));
        assert_eq!(
            canonical_project(Path::new("/tmp/../tmp")).unwrap(),
            Path::new("/tmp")
        );
    }
}
