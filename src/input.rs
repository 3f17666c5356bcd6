//! Validation of what users type: names, ids, pids, project paths.
//! Each error is one line that says what is wrong and what would be right.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("invalid {what} '{value}': use 1-128 characters from A-Z a-z 0-9 . _ @ -, starting with a letter or digit")]
    Name { what: &'static str, value: String },
    #[error("invalid pid '{0}': give the number of a running process (greater than 1)")]
    Pid(String),
    #[error("unknown type '{0}': use global, per-project or per-session")]
    Type(String),
    #[error("type per-project needs --project DIR")]
    MissingProject,
    #[error("type per-session needs --session ID (or PSM_SESSION_ID in the environment)")]
    MissingSession,
    #[error("project path '{0}' is not absolute: give the full path of the project directory")]
    RelativeProject(String),
    #[error("project directory '{0}' does not exist (or is not a directory)")]
    MissingProjectDir(String),
    #[error("invalid metadata '{0}': use KEY=VALUE")]
    Meta(String),
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
