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
        // (type, name) → where the first definition's name is, for duplicate messages.
        let mut seen: BTreeMap<(ServiceType, String), usize> = BTreeMap::new();
        let mut dep_spans = Vec::new();
        for (index, service) in raw.services.into_iter().enumerate() {
            let spans: Vec<usize> = service.depends_on.iter().map(|d| d.span().start).collect();
            let spec = self.service(index, service, config.restart, &mut seen)?;
            config.services.push(spec);
            dep_spans.push(spans);
        }
        self.dependencies(&config.services, &dep_spans)?;
        Ok(config)
    }

    /// Every `depends-on` names a service this one may depend on, and no
    /// chain of them comes back to where it started. `spans[i][j]` is where
    /// service i's dependency j is written.
    fn dependencies(&self, specs: &[ServiceSpec], spans: &[Vec<usize>]) -> Result<(), ConfigError> {
        let mut graph = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let within = format!("[[service]] '{}'", spec.name);
            let mut edges = Vec::with_capacity(spec.depends_on.len());
            for (j, name) in spec.depends_on.iter().enumerate() {
                let at = spans[i].get(j).copied();
                match super::resolve_dependency(specs, spec.service_type, name) {
                    Some(d) => edges.push(d),
                    None => {
                        let per_project_only = specs.iter().any(|s| &s.name == name);
                        let hint = if per_project_only {
                            "a global service cannot depend on a per-project one; make it per-project or drop the dependency"
                        } else {
                            "name a service defined in this file"
                        };
                        return Err(self.error(
                            at,
                            format!(
                                "unknown service '{}' in 'depends-on' of {within}: {hint}",
                                shown(name)
                            ),
                        ));
                    }
                }
            }
            graph.push(edges);
        }
        if let Some(cycle) = super::graph::find_cycle(&graph) {
            let first = cycle[0];
            let names: Vec<&str> = cycle
                .iter()
                .chain(std::iter::once(&first))
                .map(|&i| specs[i].name.as_str())
                .collect();
            // The line of the edge that closes the loop: the last node's
            // dependency on the first.
            let last = *cycle.last().unwrap_or(&first);
            let j = graph[last].iter().position(|&d| d == first);
            let at = j.and_then(|j| spans[last].get(j).copied());
            return Err(self.error(
                at,
                format!(
                    "dependency cycle in 'depends-on' of [[service]] '{}': {}; remove one of these dependencies",
                    specs[last].name,
                    shown(&names.join(" → "))
                ),
            ));
        }
        Ok(())
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
        // The offset, turned into a line only for the message: counting
        // lines from the top for every service made validation quadratic
        // (5 % of a 5,000-service start in `perf`).
        if let Some(first) = seen.insert((service_type, name.clone()), name_at) {
            let first = line_of(self.text, first);
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
        let mut depends_on: Vec<String> = Vec::new();
        for dep in raw.depends_on {
            let fail = |message: String| Err(self.error(Some(dep.span().start), message));
            if let Err(e) = validate_name("dependency", dep.get_ref()) {
                return fail(format!("{e} (key 'depends-on' of {within})"));
            }
            if dep.get_ref() == &name {
                return fail(format!(
                    "'depends-on' of {within} names the service itself: remove '{name}'"
                ));
            }
            if depends_on.contains(dep.get_ref()) {
                return fail(format!(
                    "'depends-on' of {within} names '{}' twice: keep one",
                    dep.get_ref()
                ));
            }
            depends_on.push(dep.into_inner());
        }
        let mut restart_with: Vec<String> = Vec::new();
        for dep in raw.restart_with {
            if !depends_on.contains(dep.get_ref()) {
                return Err(self.error(
                    Some(dep.span().start),
                    format!("'restart-with' of {within} names '{}', which is not in its 'depends-on': add it there or drop it here", shown(dep.get_ref())),
                ));
            }
            if !restart_with.contains(dep.get_ref()) {
                restart_with.push(dep.into_inner());
            }
        }
        Ok(ServiceSpec {
            depends_on,
            restart_with,
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
