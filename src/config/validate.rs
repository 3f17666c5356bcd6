//! From what the file says to a validated [`Config`]: semantic checks that
//! serde cannot make (types, duplicates, empty commands, health forms,
//! signals), each failing with one line naming file, line, key and fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use toml::Spanned;

use super::bounds::{Key, Range};
use super::parse::{line_of, Ctx, Human, RawConfig, RawHealth, RawRestart, RawService};
use super::{
    Config, ConfigError, ControlPolicy, HealthSpec, LogPolicy, RestartPolicy, ServiceSpec,
    DEFAULT_KIND,
};
use crate::input::{shown, validate_name};
use crate::process::signal::parse_signal;
use crate::registry::ServiceType;

impl Ctx<'_> {
    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut config = Config::empty();
        config.source = Some(self.path.to_path_buf());
        let top = "the top level";
        config.health_interval = self.duration(
            Key::HealthInterval,
            raw.health_interval,
            config.health_interval,
            top,
        )?;
        for entry in raw.projects {
            if !Path::new(entry.get_ref()).is_absolute() {
                return Err(self.error(
                    Some(entry.span().start),
                    format!(
                        "'projects' entry '{}' is not absolute: give the full path of the project directory",
                        shown(entry.get_ref())
                    ),
                ));
            }
            config.projects.push(PathBuf::from(entry.into_inner()));
        }
        config.restart = self.restart(raw.restart, RestartPolicy::default(), "[restart]")?;
        let (logs, defaults) = (raw.logs, LogPolicy::default());
        config.logs = LogPolicy {
            max_size: self.count(Key::LogMaxSize, logs.max_size, defaults.max_size, "[logs]")?,
            keep: self.count(Key::LogKeep, logs.keep, defaults.keep, "[logs]")?,
            timestamps: logs.timestamps.unwrap_or(defaults.timestamps),
        };
        let (control, defaults) = (raw.control, ControlPolicy::default());
        config.control = ControlPolicy {
            max_connections: self.count(
                Key::ControlMaxConnections,
                control.max_connections,
                defaults.max_connections,
                "[control]",
            )?,
            idle_timeout: self.duration(
                Key::ControlIdleTimeout,
                control.idle_timeout,
                defaults.idle_timeout,
                "[control]",
            )?,
        };
        // (type, name) → line of the first definition, for duplicate messages.
        let mut seen: BTreeMap<(ServiceType, String), usize> = BTreeMap::new();
        for (index, service) in raw.services.into_iter().enumerate() {
            let spec = self.service(index, service, config.restart, &mut seen)?;
            config.services.push(spec);
        }
        Ok(config)
    }

    fn service(
        &self,
        index: usize,
        raw: RawService,
        defaults: RestartPolicy,
        seen: &mut BTreeMap<(ServiceType, String), usize>,
    ) -> Result<ServiceSpec, ConfigError> {
        let name_at = raw.name.span().start;
        let name = raw.name.into_inner();
        if let Err(e) = validate_name("service name", &name) {
            return Err(self.error(
                Some(name_at),
                format!("{e} (key 'name' of [[service]] #{})", index + 1),
            ));
        }
        let within = format!("[[service]] '{name}'");

        let type_at = raw.service_type.span().start;
        let service_type = match ServiceType::parse(raw.service_type.get_ref()) {
            Some(ServiceType::PerSession) => {
                return Err(self.error(
                    Some(type_at),
                    format!("'type' per-session is not allowed in {within}: sessions start their own services; use global or per-project"),
                ))
            }
            Some(t) => t,
            None => {
                return Err(self.error(
                    Some(type_at),
                    format!(
                        "unknown 'type' '{}' in {within}: use global or per-project",
                        shown(raw.service_type.get_ref())
                    ),
                ))
            }
        };
        if let Some(first) = seen.insert((service_type, name.clone()), line_of(self.text, name_at))
        {
            return Err(self.error(
                Some(name_at),
                format!("duplicate 'name' in {within}: a {service_type} service '{name}' is already defined at line {first}; rename one of them"),
            ));
        }

        let command_at = raw.command.span().start;
        let command = raw.command.into_inner();
        if !matches!(command.first(), Some(program) if !program.is_empty()) {
            return Err(self.error(
                Some(command_at),
                format!("empty 'command' in {within}: give the program and its arguments, e.g. [\"python3\", \"-m\", \"http.server\"]"),
            ));
        }

        let mut env = BTreeMap::new();
        for (key, value) in raw.env {
            let bad = key.get_ref().is_empty() || key.get_ref().contains(['=', '\0']);
            if bad {
                return Err(self.error(
                    Some(key.span().start),
                    format!("invalid variable name '{}' in 'env' of {within}: use a name without '=' or NUL", shown(key.get_ref())),
                ));
            }
            env.insert(key.into_inner(), value);
        }

        let health = match raw.health {
            Some(h) => Some(self.health(h, &within)?),
            None => None,
        };

        let stop_signal = match raw.stop_signal {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(s.get_ref()).ok_or_else(|| {
                self.error(
                    Some(s.span().start),
                    format!("unknown signal '{}' for 'stop-signal' in {within}: use a name like TERM, INT, HUP, QUIT or a number", shown(s.get_ref())),
                )
            })?,
        };

        let kind = match raw.kind {
            None => DEFAULT_KIND.to_string(),
            Some(k) => {
                if let Err(e) = validate_name("kind", k.get_ref()) {
                    return Err(self.error(
                        Some(k.span().start),
                        format!("{e} (key 'kind' of {within})"),
                    ));
                }
                k.into_inner()
            }
        };

        let restart = self.restart(raw.restart, defaults, &format!("'restart' of {within}"))?;
        Ok(ServiceSpec {
            start_period: self.duration(
                Key::StartPeriod,
                raw.start_period,
                Duration::ZERO,
                &within,
            )?,
            stop_timeout: self.duration(
                Key::StopTimeout,
                raw.stop_timeout,
                Duration::from_secs(2),
                &within,
            )?,
            name,
            service_type,
            kind,
            command,
            cwd: raw.cwd,
            env,
            health,
            stop_signal,
            restart,
            options: Value::Object(raw.options.unwrap_or_default()),
        })
    }

    fn health(&self, raw: Spanned<RawHealth>, within: &str) -> Result<HealthSpec, ConfigError> {
        let at = raw.span().start;
        let in_health = format!("'health' of {within}");
        let raw = raw.into_inner();
        let forms: Vec<&str> = [
            raw.port.as_ref().map(|_| "port"),
            raw.file.as_ref().map(|_| "file"),
            raw.probe.as_ref().map(|_| "probe"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let fail = |message: String| Err(self.error(Some(at), message));
        if forms.len() != 1 {
            let found = if forms.is_empty() {
                "none".to_string()
            } else {
                forms.join(" and ")
            };
            return fail(format!("'health' in {within} needs exactly one of port, file or probe (found {found}): keep one"));
        }
        // Keys that belong to another form are mistakes, not silently ignored.
        let stray = [
            (raw.host.is_some() && raw.port.is_none(), "host", "port"),
            (
                raw.max_age.is_some() && raw.file.is_none(),
                "max-age",
                "file",
            ),
            (
                raw.options.is_some() && raw.probe.is_none(),
                "options",
                "probe",
            ),
        ];
        if let Some((_, key, form)) = stray.iter().find(|(bad, ..)| *bad) {
            return fail(format!(
                "key '{key}' in 'health' of {within} only goes with '{form}': remove it"
            ));
        }
        match (raw.port, raw.file, raw.probe) {
            (Some(port), _, _) => Ok(HealthSpec::Port {
                port: self.count(Key::HealthPort, Some(port), 0, &in_health)?,
                host: raw.host.unwrap_or_else(|| "127.0.0.1".into()),
            }),
            (_, Some(path), _) => Ok(HealthSpec::File {
                path,
                max_age: self.duration(
                    Key::HealthMaxAge,
                    raw.max_age,
                    Duration::from_secs(30),
                    &in_health,
                )?,
            }),
            (_, _, Some(probe)) => {
                if let Err(e) = validate_name("probe name", probe.get_ref()) {
                    return Err(self.error(
                        Some(probe.span().start),
                        format!("{e} (key 'probe' in 'health' of {within})"),
                    ));
                }
                Ok(HealthSpec::Probe {
                    name: probe.into_inner(),
                    options: Value::Object(raw.options.unwrap_or_default()),
                })
            }
            // Ruled out by the count of forms above.
            (None, None, None) => fail("'health' has no form".into()),
        }
    }

    /// A `[restart]` table (the file's, or a service's override) over `base`.
    fn restart(
        &self,
        raw: RawRestart,
        base: RestartPolicy,
        within: &str,
    ) -> Result<RestartPolicy, ConfigError> {
        Ok(RestartPolicy {
            base: self.duration(Key::RestartBase, raw.base, base.base, within)?,
            max: self.duration(Key::RestartMax, raw.max, base.max, within)?,
            attempts: self.count(Key::RestartAttempts, raw.attempts, base.attempts, within)?,
            stable_after: self.duration(
                Key::StableAfter,
                raw.stable_after,
                base.stable_after,
                within,
            )?,
        })
    }

    /// A duration key within its bounds, or `default` when absent.
    fn duration(
        &self,
        key: Key,
        raw: Option<Spanned<Human>>,
        default: Duration,
        within: &str,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        match key.check_duration(raw.get_ref().0) {
            Ok(()) => Ok(raw.into_inner().0),
            Err(range) => Err(self.out_of_range(key, raw.span(), range, within)),
        }
    }

    /// A count key within its bounds, as the type psm keeps it in, or
    /// `default` when absent. Every range of the table fits its key's type
    /// (a test proves it), so the conversion fails only with the bound.
    fn count<T: TryFrom<i64>>(
        &self,
        key: Key,
        raw: Option<Spanned<i64>>,
        default: T,
        within: &str,
    ) -> Result<T, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let value = *raw.get_ref();
        match key.check_count(value) {
            Ok(()) => T::try_from(value)
                .map_err(|_| self.out_of_range(key, raw.span(), key.range(), within)),
            Err(range) => Err(self.out_of_range(key, raw.span(), range, within)),
        }
    }

    /// "'keep' = 4294967295 in [logs] is out of range: use a value from 0 to 100".
    fn out_of_range(
        &self,
        key: Key,
        span: std::ops::Range<usize>,
        range: Range,
        within: &str,
    ) -> ConfigError {
        let written = self.text.get(span.clone()).unwrap_or("?");
        self.error(
            Some(span.start),
            format!(
                "'{}' = {} in {within} is out of range: use a value from {range}",
                key.name(),
                shown(written)
            ),
        )
    }
}
