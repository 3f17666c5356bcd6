//! What a service's process was started from, as a short hash recorded in
//! its registry record (`metadata.specHash`), so that a coordinator that
//! adopts the process after a restart can tell whether the config still
//! asks for that process or for another one.
//!
//! The hash covers what defines the process: kind, command, working
//! directory, environment and the kind's options. What only shapes its
//! supervision (health check, restart policy, start period, stop signal and
//! timeout) is left out: an adopting coordinator applies those from its
//! config at once, without a restart. It is FNV-1a over a canonical JSON
//! text (object keys sorted), so it is the same on every run, machine and
//! psm build that reads the same config.

use serde_json::{json, Map, Value};

use crate::config::Instance;

/// The record's metadata key holding [`spec_hash`].
pub const SPEC_HASH_KEY: &str = "specHash";

/// The hash of what `instance` runs.
pub fn spec_hash(instance: &Instance) -> String {
    let spec = &instance.spec;
    let text = canonical(&json!({
        "kind": spec.kind,
        "command": spec.command,
        "cwd": instance.cwd.to_string_lossy(),
        "env": spec.env,
        "options": spec.options,
    }))
    .to_string();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The same value with every object's keys in sorted order (serde_json keeps
/// insertion order here, so a table's keys would otherwise be hashed in the
/// order the file lists them).
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let sorted: Map<String, Value> = keys
                .into_iter()
                .map(|k| (k.clone(), canonical(&map[k])))
                .collect();
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn instance(service: &str) -> Instance {
        let text = format!("[[service]]\nname = \"web\"\ntype = \"global\"\n{service}");
        let config = Config::parse(&text, Path::new("psm.toml")).expect("valid config");
        config.services[0].instantiate(Path::new("/root"), None)
    }

    #[test]
    fn same_process_same_hash() {
        let base = instance("command = [\"sh\", \"a.sh\"]\nenv = { A = \"1\", B = \"2\" }");
        // (what differs, whether the process differs)
        let table = [
            ("command = [\"sh\", \"a.sh\"]\nenv = { B = \"2\", A = \"1\" }", false),
            ("command = [\"sh\", \"a.sh\"]\nenv = { A = \"1\", B = \"2\" }\nstop-timeout = \"9s\"", false),
            ("command = [\"sh\", \"a.sh\"]\nenv = { A = \"1\", B = \"2\" }\nhealth = { port = 80 }", false),
            ("command = [\"sh\", \"b.sh\"]\nenv = { A = \"1\", B = \"2\" }", true),
            ("command = [\"sh\", \"a.sh\"]\nenv = { A = \"1\", B = \"3\" }", true),
            ("command = [\"sh\", \"a.sh\"]\nenv = { A = \"1\", B = \"2\" }\ncwd = \"sub\"", true),
            ("command = [\"sh\", \"a.sh\"]\nenv = { A = \"1\", B = \"2\" }\noptions = { x = 1 }", true),
        ];
        for (service, differs) in table {
            let other = instance(service);
            assert_eq!(spec_hash(&base) != spec_hash(&other), differs, "{service}");
        }
    }

    #[test]
    fn hash_is_stable_text() {
        let h = spec_hash(&instance("command = [\"sleep\", \"1\"]"));
        assert_eq!(h.len(), 16);
        assert_eq!(h, spec_hash(&instance("command = [\"sleep\", \"1\"]")));
    }
}
