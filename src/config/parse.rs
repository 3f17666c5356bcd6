//! The file as written, with the positions errors need: serde structs that
//! keep spans where a later check may need a line, the humantime wrapper, and
//! the re-scanning of the TOML text that words toml's errors as one line
//! naming the table and key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::ConfigError;
use crate::input::shown;

const DURATION_HINT: &str = "use a humantime duration like \"15s\" or \"250ms\"";

// ---------------------------------------------------------------------------
// The file as written. Spans are kept where a later check may need a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub(super) health_interval: Option<Spanned<Human>>,
    #[serde(default)]
    pub(super) projects: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) restart: RawRestart,
    #[serde(default)]
    pub(super) logs: RawLogs,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRestart {
    pub(super) base: Option<Spanned<Human>>,
    pub(super) max: Option<Spanned<Human>>,
    pub(super) attempts: Option<Spanned<i64>>,
    pub(super) stable_after: Option<Spanned<Human>>,
}

// Counts are read as TOML's own i64 and checked against the bounds table, so
// `keep = 4294967296` or `attempts = -1` get the allowed range in the message
// rather than serde's "expected u32".
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLogs {
    pub(super) max_size: Option<Spanned<i64>>,
    pub(super) keep: Option<Spanned<i64>>,
    pub(super) timestamps: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawControl {
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) idle_timeout: Option<Spanned<Human>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    #[serde(rename = "type")]
    pub(super) service_type: Spanned<String>,
    pub(super) command: Spanned<Vec<String>>,
    pub(super) cwd: Option<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<Spanned<String>, String>,
    pub(super) health: Option<Spanned<RawHealth>>,
    pub(super) start_period: Option<Spanned<Human>>,
    pub(super) stop_signal: Option<Spanned<String>>,
    pub(super) stop_timeout: Option<Spanned<Human>>,
    #[serde(default)]
    pub(super) restart: RawRestart,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) options: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub(super) depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) restart_with: Vec<Spanned<String>>,
}

/// Every form's keys in one table, so a mix of forms gets a precise message
/// instead of serde's "did not match any variant".
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHealth {
    pub(super) port: Option<Spanned<i64>>,
    pub(super) host: Option<String>,
    pub(super) file: Option<String>,
    pub(super) max_age: Option<Spanned<Human>>,
    pub(super) probe: Option<Spanned<String>>,
    pub(super) options: Option<serde_json::Map<String, Value>>,
}

/// A humantime duration. Parsed inside deserialization so that toml attaches
/// the value's span to the error.
pub(super) struct Human(pub(super) Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Human).map_err(|e| {
            // humantime's reason matters for "99999999999999999999d"
            // ("number is too large"); the text is cut, it may be huge.
            de::Error::custom(format!("invalid duration '{}' ({e})", shown(&text)))
        })
    }
}

// ---------------------------------------------------------------------------
// Error wording.

/// The text being parsed and its file name, for locating and wording errors.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn error(&self, at: Option<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: at.map(|o| line_of(self.text, o)),
            message,
        }
    }

    /// Rewords a toml error as one line; toml's own Display spans several.
    pub(super) fn toml_error(&self, err: &toml::de::Error, syntax: bool) -> ConfigError {
        let span = err.span();
        let at = span.as_ref().map(|s| s.start);
        let raw = one_line(err.message());
        if syntax {
            // A value toml cannot hold (an integer beyond 64 bits) is a
            // syntax error to toml; the key still tells the user where.
            let key = at.and_then(|o| key_before(self.text, o));
            let for_key = match (key, span.as_ref()) {
                (Some(k), Some(s)) => format!(" for '{}' in {}", shown(&k), self.location(s)),
                _ => String::new(),
            };
            return self.error(at, format!("{raw}{for_key}: fix the TOML syntax"));
        }
        let within = span
            .as_ref()
            .map(|s| self.location(s))
            .unwrap_or_else(|| "the top level".into());
        let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
            let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
            let expected = backticked(tail);
            if expected.is_empty() {
                format!("unknown key '{}' in {within}; remove it", shown(key))
            } else {
                format!(
                    "unknown key '{}' in {within}; expected one of {}",
                    shown(key),
                    expected.join(", ")
                )
            }
        } else if let Some(rest) = raw.strip_prefix("missing field `") {
            let key = rest.split('`').next().unwrap_or(rest);
            format!("missing key '{key}' in {within}; add it")
        } else {
            let key = at.and_then(|o| key_before(self.text, o));
            let for_key = key
                .map(|k| format!(" for '{}'", shown(&k)))
                .unwrap_or_default();
            if raw.starts_with("invalid duration") {
                format!("{raw}{for_key} in {within}: {DURATION_HINT}")
            } else {
                // toml echoes the value, which may be huge.
                format!("bad value{for_key} in {within}: {}", shown(&raw))
            }
        };
        self.error(at, message)
    }

    /// Names the table holding `span`: "[restart]", "[[service]] 'web'",
    /// "'health' of [[service]] 'web'", or "the top level".
    fn location(&self, span: &Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let mut header: Option<(usize, String)> = None;
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if offset > start {
                break;
            }
            if let Some(h) = table_header(line) {
                header = Some((offset, h));
            }
            offset += line.len();
        }
        let table = match header {
            None => "the top level".to_string(),
            Some((from, h)) if h == "[[service]]" => match service_name_after(self.text, from) {
                Some(name) => format!("[[service]] '{}'", shown(&name)),
                None => shown(&h),
            },
            Some((_, h)) => shown(&h),
        };
        match inline_table_key(self.text, start) {
            Some(key) => format!("'{}' of {table}", shown(&key)),
            None => table,
        }
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `quoted` names in serde's "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// `[name]` or `[[name]]`, spaces and comment dropped, if `line` is a table
/// header.
fn table_header(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let array = inner.starts_with('[') && inner.ends_with(']');
    let bare = inner.trim_start_matches('[').trim_end_matches(']').trim();
    let is_key = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    match (is_key, array) {
        (false, _) => None,
        (true, true) => Some(format!("[[{bare}]]")),
        (true, false) => Some(format!("[{bare}]")),
    }
}

/// The `name = "..."` of the `[[service]]` table whose header starts at `from`.
fn service_name_after(text: &str, from: usize) -> Option<String> {
    for line in text[from..].split_inclusive('\n').skip(1) {
        if table_header(line).is_some() {
            return None;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "name" {
            let value = value.trim();
            let quote = value.chars().next().filter(|c| matches!(c, '"' | '\''))?;
            return value[1..].split(quote).next().map(str::to_string);
        }
    }
    None
}

/// The bare key just before the value at `offset` (`key = <value>`).
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?.trim_end();
    let before = before.strip_suffix('=')?.trim_end();
    let key: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// If `offset` lies inside an inline table `key = { ... }` on its line, that
/// key. A heuristic for messages only: braces inside strings can fool it.
fn inline_table_key(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let mut depth = 0usize;
    for (i, c) in before[line_start..].char_indices().rev() {
        match c {
            '}' => depth += 1,
            '{' if depth > 0 => depth -= 1,
            '{' => return key_before(text, line_start + i),
            _ => {}
        }
    }
    None
}
