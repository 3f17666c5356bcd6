//! The control protocol: one JSON object per line over the coordinator's unix
//! socket, a request from the CLI and one response back. Shared by the server
//! (`control`) and the client (`client`), so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input::{shown, validate_name};

/// The longest request line the coordinator reads: far more than any request
/// psm sends (a name is at most 128 bytes), small enough that a client
/// cannot make it buffer much. A longer line is answered with an error and
/// the connection closed.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Reads one request line. `Err` is the response to send back: one line that
/// says what was wrong, with whatever it echoes of the input escaped and cut.
///
/// A target's service must be a valid name and its project a path without
/// control characters, as the CLI sends them: anything else can name no
/// configured service, and refusing it here keeps every reply one line.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    let request: Request = serde_json::from_str(line).map_err(|e| {
        Response::error(format!(
            "bad request: {}; send one JSON object per line, e.g. {{\"cmd\":\"ping\"}}",
            shown(&e.to_string())
        ))
    })?;
    if let Request::Start(t) | Request::Stop(t) | Request::Restart(t) = &request {
        if let Err(e) = validate_name("service name", &t.service) {
            return Err(Response::error(format!("bad request: {e}")));
        }
        if let Some(project) = t
            .project
            .as_deref()
            .filter(|p| p.contains(char::is_control))
        {
            return Err(Response::error(format!(
                "bad request: project path '{}' has control characters; give the project directory's path",
                shown(project)
            )));
        }
    }
    Ok(request)
}

/// CLI → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Is the coordinator alive and serving? Replies with its pid.
    Ping,
    /// Start a configured service (clears a user stop or a `failed` state).
    Start(Target),
    /// Stop a service and keep it down until started again.
    Stop(Target),
    /// Stop (if running) and start again, with the restart count reset.
    Restart(Target),
    /// Re-read the configuration and apply the difference.
    Reload,
    /// Stop every service and exit.
    Down,
}

/// Which service a request names. `project` selects one per-project
/// instance; without it, a request applies to every instance of the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Coordinator → CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// One line for people: what was done, or what went wrong and what to do.
    pub message: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: message.into(),
            data: Value::Null,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: message.into(),
            data: Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let req = Request::Restart(Target {
            service: "web".into(),
            project: None,
        });
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"cmd":"restart","service":"web"}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ping"}"#).unwrap(),
            Request::Ping
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }

    /// Bad lines get one bounded line back; good ones parse.
    #[test]
    fn parse_request_answers_bad_lines_in_one_line() {
        assert_eq!(parse_request(r#"{"cmd":"ping"}"#), Ok(Request::Ping));
        let huge = format!(r#"{{"cmd":"{}\n"}}"#, "x".repeat(60_000));
        let bad_name = format!(r#"{{"cmd":"stop","service":"a\nb{}"}}"#, "x".repeat(5000));
        let bad_project = r#"{"cmd":"start","service":"web","project":"/p\u001b[2J"}"#;
        for bad in [
            "",
            "{",
            "null",
            r#"{"cmd":"explode"}"#,
            "\u{1b}[2J",
            huge.as_str(),
            bad_name.as_str(),
            bad_project,
        ] {
            let response = parse_request(bad).unwrap_err();
            assert!(!response.ok);
            assert!(
                response.message.starts_with("bad request: "),
                "{}",
                response.message
            );
            assert!(!response.message.contains('\n'), "{}", response.message);
            assert!(
                response.message.len() < 600,
                "{} bytes",
                response.message.len()
            );
        }
    }
}
