//! `psm.toml`: parsing and validation of the service configuration.
//!
//! Responsibility: turn the file into a validated [`Config`] (defaults filled
//! in, per-service restart overrides merged) or into one [`ConfigError`] whose
//! message is a single line naming the file, the line, the key and the fix.
//! Nothing here touches processes or the registry; [`ServiceSpec::instantiate`]
//! only derives what one instance of a service would run.
//!
//! Invariants of a parsed `Config`: service names are valid names and unique
//! per type; no service is `per-session` (sessions start their own); every
//! command has a non-empty program; `health-interval` is positive; `projects`
//! are absolute; every `depends-on` names a service it may depend on (not
//! itself) and no chain of them is a cycle (`graph`).
//!
//! Layout: `types` holds what the rest of psm sees (the validated values);
//! `parse` reads the file as written, keeping positions, and words errors;
//! `validate` turns what was read into [`Config`] or one error.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub mod bounds;
pub mod graph;
mod parse;
mod types;
mod validate;

pub use types::*;

use parse::{Ctx, RawConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} not found: create it or pass --config FILE", .0.display())]
    Missing(PathBuf),
    #[error("cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}{}: {}", .path.display(), LineSuffix(*.line), .message)]
    Invalid {
        path: PathBuf,
        /// 1-based, where the problem could be located.
        line: Option<usize>,
        message: String,
    },
}

struct LineSuffix(Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, " line {n}"),
            None => Ok(()),
        }
    }
}

impl Config {
    /// Reads and parses `path`. A missing file is [`ConfigError::Missing`], so
    /// callers can choose to run with [`Config::empty`] instead.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match crate::fsx::read_text(path, crate::fsx::MAX_CONFIG_BYTES) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ConfigError::Missing(path.to_path_buf()))
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses `text`; `source` is the file name used in errors and in `source`.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, path: source };
        // Parsing as a plain table first separates TOML syntax errors from
        // schema errors, which are worded differently.
        if let Err(e) = toml::from_str::<toml::Table>(text) {
            return Err(ctx.toml_error(&e, true));
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e, false))?;
        ctx.validate(raw)
    }
}

#[cfg(test)]
mod tests;
