//! What the coordinator decides, as pure functions with table tests; the
//! `CoordinatorActor` only carries the answers out.
//!
//! - [`active_projects`] and [`desired`]: the instances the config asks for,
//!   given which projects are active.
//! - [`reload_plan`]: what a reload (or the tick's per-project
//!   reconciliation) adds, removes, restarts and leaves alone.
//! - [`adoption`]: at start-up, which live processes of a previous
//!   coordinator each instance takes over, which it replaces because its
//!   spec changed, and which processes and records are left over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Instance, ServiceSpec};
use crate::process::Identity;
use crate::registry::{status, Registry, ServiceKey, ServiceRecord, ServiceType, SessionRecord};
use crate::supervisor::fingerprint::{spec_hash, SPEC_HASH_KEY};

/// Projects whose per-project services should run: those the config lists
/// and those of sessions that are alive (by `session_alive`).
pub fn active_projects(
    configured: &[PathBuf],
    registry: &Registry,
    session_alive: impl Fn(&SessionRecord) -> bool,
) -> BTreeSet<PathBuf> {
    let mut projects: BTreeSet<PathBuf> = configured.iter().cloned().collect();
    projects.extend(
        registry
            .sessions
            .values()
            .filter(|s| !s.project_path.is_empty() && session_alive(s))
            .map(|s| PathBuf::from(&s.project_path)),
    );
    projects
}

/// Which instances [`desired`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// Every instance: global services once, per-project ones per project.
    All,
    /// Only the per-project instances (the tick's reconciliation).
    PerProject,
}

/// The instances `specs` ask for: each global service once, each
/// per-project service once per project in `projects` that `is_dir` says
/// exists.
pub fn desired(
    specs: &[ServiceSpec],
    root: &Path,
    projects: &BTreeSet<PathBuf>,
    which: Instances,
    is_dir: impl Fn(&Path) -> bool,
) -> BTreeMap<ServiceKey, Instance> {
    let existing: Vec<&PathBuf> = projects.iter().filter(|p| is_dir(p)).collect();
    let mut out = BTreeMap::new();
    for spec in specs {
        if spec.service_type == ServiceType::PerProject {
            for project in &existing {
                let inst = spec.instantiate(root, Some(project));
                out.insert(inst.key.clone(), inst);
            }
        } else if which == Instances::All {
            let inst = spec.instantiate(root, None);
            out.insert(inst.key.clone(), inst);
        }
    }
    out
}

/// What changes between the running instances and the desired ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Desired, not running, not stopped by a user: start.
    pub added: Vec<ServiceKey>,
    /// Running, no longer desired: stop and remove the record.
    pub removed: Vec<ServiceKey>,
    /// Running and desired with a different instance: stop, then start anew.
    pub changed: Vec<ServiceKey>,
    /// Running and desired as they are: leave alone.
    pub untouched: Vec<ServiceKey>,
    /// Stopped by a user and no longer desired: forget the stop and its
    /// `stopped` record.
    pub forgotten: Vec<ServiceKey>,
}

impl ReloadPlan {
    /// "reloaded: 1 added, 0 removed, 2 changed, 3 unchanged".
    pub fn summary(&self) -> String {
        format!(
            "reloaded: {} added, {} removed, {} changed, {} unchanged",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.untouched.len()
        )
    }
}

/// The plan that turns `running` into `desired`, leaving `user_stopped`
/// instances stopped.
pub fn reload_plan(
    running: &BTreeMap<ServiceKey, Instance>,
    user_stopped: &BTreeSet<ServiceKey>,
    desired: &BTreeMap<ServiceKey, Instance>,
) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for (key, instance) in running {
        match desired.get(key) {
            None => plan.removed.push(key.clone()),
            Some(d) if d != instance => plan.changed.push(key.clone()),
            Some(_) => plan.untouched.push(key.clone()),
        }
    }
    plan.added = desired
        .keys()
        .filter(|k| !running.contains_key(*k) && !user_stopped.contains(*k))
        .cloned()
        .collect();
    plan.forgotten = user_stopped
        .iter()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    plan
}

/// How one desired instance's actor starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Take over the live process in the record.
    Adopt(ServiceRecord),
    /// The live process in the record was started from another spec than
    /// the config's: take it over, then restart it on the config's spec.
    Replace(ServiceRecord),
    /// Nothing to take over: spawn.
    Fresh,
}

/// The adoption split at a coordinator's start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Adoption {
    /// Each desired instance not stopped by a user, and how to start it.
    pub start: Vec<(ServiceKey, Start)>,
    /// Instances a user stopped (their records say `stopped`): left down.
    pub user_stopped: BTreeSet<ServiceKey>,
    /// Live processes of ours that no record names and no instance took
    /// (twins, or services no longer configured): to end; no record to drop.
    pub twins: Vec<(ServiceKey, ServiceRecord)>,
    /// Records of instances no longer desired: end their process (if any)
    /// and remove them.
    pub leftovers: Vec<(ServiceKey, ServiceRecord)>,
}

/// Splits what a previous coordinator left.
///
/// - `previous`: the records managed by a coordinator;
/// - `unrecorded`: live processes whose environment names this root, that no
///   record names, by instance label (spawned by a coordinator that died
///   before recording them);
/// - `alive`: whether a record's process (pid + start time) is alive;
/// - `now`: the time for the records made up for unrecorded processes.
///
/// A record without a spec hash (an older psm) is adopted as it is: what it
/// was started from is unknown, and restarting every service on an upgrade
/// would be worse. So is an unrecorded process, for the same reason.
pub fn adoption(
    previous: BTreeMap<ServiceKey, ServiceRecord>,
    mut unrecorded: HashMap<String, Vec<(ServiceKey, Identity)>>,
    desired: &BTreeMap<ServiceKey, Instance>,
    alive: impl Fn(&ServiceRecord) -> bool,
    now: u64,
) -> Adoption {
    let user_stopped: BTreeSet<ServiceKey> = previous
        .iter()
        .filter(|(_, r)| r.status == status::STOPPED)
        .map(|(k, _)| k.clone())
        .collect();
    let mut start = Vec::new();
    for (key, instance) in desired {
        if user_stopped.contains(key) {
            continue;
        }
        let how = match previous.get(key).filter(|r| alive(r)) {
            Some(record) => {
                let recorded = record.metadata.get(SPEC_HASH_KEY).and_then(Value::as_str);
                match recorded {
                    Some(hash) if hash != spec_hash(instance) => Start::Replace(record.clone()),
                    _ => Start::Adopt(record.clone()),
                }
            }
            None => match unrecorded.get_mut(&instance.label).and_then(Vec::pop) {
                Some((_, identity)) => {
                    let mut r = ServiceRecord::new(
                        &key.scope,
                        instance.spec.command.join(" "),
                        identity,
                        now,
                    );
                    r.pgid = Some(identity.pid);
                    Start::Adopt(r)
                }
                None => Start::Fresh,
            },
        };
        start.push((key.clone(), how));
    }
    let twins = unrecorded
        .into_values()
        .flatten()
        .map(|(key, identity)| {
            let mut r = ServiceRecord::new(&key.scope, "", identity, now);
            r.pgid = Some(identity.pid);
            (key, r)
        })
        .collect();
    let leftovers = previous
        .into_iter()
        .filter(|(k, _)| !desired.contains_key(k))
        .collect();
    Adoption {
        start,
        user_stopped,
        twins,
        leftovers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Scope;

    const ROOT: &str = "/r";

    fn config(services: &[(&str, &str, &str)]) -> Config {
        let mut text = String::new();
        for (name, kind, command) in services {
            text.push_str(&format!(
                "[[service]]\nname = \"{name}\"\ntype = \"{kind}\"\ncommand = [\"{command}\"]\n"
            ));
        }
        Config::parse(&text, Path::new("psm.toml")).expect("valid config")
    }

    fn all(c: &Config, projects: &[&str]) -> BTreeMap<ServiceKey, Instance> {
        let projects = projects.iter().map(PathBuf::from).collect();
        desired(
            &c.services,
            Path::new(ROOT),
            &projects,
            Instances::All,
            |_| true,
        )
    }

    fn keys(map: &BTreeMap<ServiceKey, Instance>) -> Vec<String> {
        map.values().map(|i| i.label.clone()).collect()
    }

    fn global(name: &str) -> ServiceKey {
        ServiceKey::global(name)
    }

    #[test]
    fn desired_table() {
        let c = config(&[("web", "global", "w"), ("kb", "per-project", "k {project}")]);
        let projects: BTreeSet<PathBuf> = ["/p/a", "/p/b", "/p/gone"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let exists = |p: &Path| p != Path::new("/p/gone");
        // (which, labels)
        let table = [
            (Instances::All, vec!["web", "kb@a", "kb@b"]),
            (Instances::PerProject, vec!["kb@a", "kb@b"]),
        ];
        for (which, expected) in table {
            let got = desired(&c.services, Path::new(ROOT), &projects, which, exists);
            let mut labels = keys(&got);
            labels.sort();
            let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
            expected.sort();
            assert_eq!(labels, expected, "{which:?}");
        }
        let kb = &desired(
            &c.services,
            Path::new(ROOT),
            &projects,
            Instances::All,
            exists,
        )[&ServiceKey::new("kb", Scope::Project("/p/a".into()))];
        assert_eq!(kb.spec.command, ["k /p/a"]);
    }

    #[test]
    fn active_projects_are_configured_plus_live_sessions() {
        let mut registry = Registry::default();
        for (id, project, pid) in [("s1", "/p/live", 10), ("s2", "/p/dead", 11), ("s3", "", 12)] {
            let s = SessionRecord {
                pid,
                project_path: project.into(),
                start_time: 0,
                pid_start_time: Some(1),
                extra: Default::default(),
            };
            registry.sessions.insert(id.into(), s);
        }
        let got = active_projects(&[PathBuf::from("/p/conf")], &registry, |s| s.pid != 11);
        let expected: BTreeSet<PathBuf> =
            ["/p/conf", "/p/live"].iter().map(PathBuf::from).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn reload_plan_table() {
        let old = all(
            &config(&[
                ("a", "global", "x"),
                ("b", "global", "x"),
                ("c", "global", "x"),
            ]),
            &[],
        );
        let stopped = |names: &[&str]| names.iter().map(|n| global(n)).collect::<BTreeSet<_>>();
        let k = |names: &[&str]| names.iter().map(|n| global(n)).collect::<Vec<_>>();
        // (new config, user-stopped, added, removed, changed, untouched, forgotten)
        type Row<'a> = (
            Vec<(&'a str, &'a str, &'a str)>,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let table: Vec<Row> = vec![
            // Same config: nothing to do.
            (
                vec![
                    ("a", "global", "x"),
                    ("b", "global", "x"),
                    ("c", "global", "x"),
                ],
                &[],
                &[],
                &[],
                &[],
                &["a", "b", "c"],
                &[],
            ),
            // One changed, one removed, one added.
            (
                vec![
                    ("a", "global", "y"),
                    ("b", "global", "x"),
                    ("d", "global", "x"),
                ],
                &[],
                &["d"],
                &["c"],
                &["a"],
                &["b"],
                &[],
            ),
            // An added service a user stopped stays stopped; a stopped one the
            // config dropped is forgotten.
            (
                vec![
                    ("a", "global", "x"),
                    ("b", "global", "x"),
                    ("c", "global", "x"),
                    ("d", "global", "x"),
                ],
                &["d", "e"],
                &[],
                &[],
                &[],
                &["a", "b", "c"],
                &["e"],
            ),
            // Everything removed.
            (vec![], &[], &[], &["a", "b", "c"], &[], &[], &[]),
        ];
        for (services, user, added, removed, changed, untouched, forgotten) in table {
            let new = all(&config(&services), &[]);
            let plan = reload_plan(&old, &stopped(user), &new);
            assert_eq!(
                plan,
                ReloadPlan {
                    added: k(added),
                    removed: k(removed),
                    changed: k(changed),
                    untouched: k(untouched),
                    forgotten: k(forgotten),
                },
                "{services:?}"
            );
        }
    }

    fn record(pid: i32, status_: &str, hash: Option<&str>) -> ServiceRecord {
        let mut r = ServiceRecord::new(&Scope::Global, "x", Identity { pid, start_time: 7 }, 1);
        r.status = status_.into();
        if let Some(h) = hash {
            r.metadata.insert(SPEC_HASH_KEY.into(), Value::from(h));
        }
        r
    }

    #[test]
    fn adoption_table() {
        let desired = all(
            &config(&[
                ("a", "global", "x"),
                ("b", "global", "x"),
                ("c", "global", "x"),
                ("d", "global", "x"),
                ("e", "global", "x"),
            ]),
            &[],
        );
        let hash = |name: &str| spec_hash(&desired[&global(name)]);
        let previous: BTreeMap<ServiceKey, ServiceRecord> = [
            // Alive, same spec: adopt.
            ("a", record(100, "running", Some(&hash("a")))),
            // Alive, another spec: replace.
            ("b", record(101, "running", Some("0000000000000000"))),
            // Alive, no hash (older psm): adopt.
            ("c", record(102, "running", None)),
            // Dead: start fresh (or take an unrecorded process).
            ("d", record(103, "running", Some(&hash("d")))),
            // Stopped by a user: left down.
            ("e", record(104, "stopped", None)),
            // No longer configured: leftover.
            ("gone", record(105, "running", None)),
        ]
        .into_iter()
        .map(|(n, r)| (global(n), r))
        .collect();
        let id = |pid| Identity { pid, start_time: 9 };
        let unrecorded: HashMap<String, Vec<(ServiceKey, Identity)>> = [
            ("d".to_string(), vec![(global("d"), id(200))]),
            // A twin of a recorded, adopted instance.
            ("a".to_string(), vec![(global("a"), id(201))]),
            // A service no longer configured.
            ("old".to_string(), vec![(global("old"), id(202))]),
        ]
        .into_iter()
        .collect();
        let got = adoption(
            previous.clone(),
            unrecorded,
            &desired,
            |r| r.pid != Some(103),
            5,
        );

        let how: BTreeMap<String, Start> = got
            .start
            .iter()
            .map(|(k, s)| (k.name.clone(), s.clone()))
            .collect();
        assert_eq!(how["a"], Start::Adopt(previous[&global("a")].clone()));
        assert_eq!(how["b"], Start::Replace(previous[&global("b")].clone()));
        assert_eq!(how["c"], Start::Adopt(previous[&global("c")].clone()));
        match &how["d"] {
            Start::Adopt(r) => assert_eq!((r.pid, r.pgid, r.start_time), (Some(200), Some(200), 5)),
            other => panic!("d: {other:?}"),
        }
        assert!(!how.contains_key("e"), "user-stopped e is not started");
        assert_eq!(got.user_stopped, [global("e")].into_iter().collect());
        let mut twins: Vec<i32> = got.twins.iter().filter_map(|(_, r)| r.pid).collect();
        twins.sort();
        assert_eq!(twins, [201, 202]);
        assert_eq!(
            got.leftovers
                .iter()
                .map(|(k, _)| k.name.as_str())
                .collect::<Vec<_>>(),
            ["gone"]
        );
    }

    #[test]
    fn nothing_left_nothing_to_adopt() {
        let desired = all(&config(&[("a", "global", "x")]), &[]);
        let got = adoption(BTreeMap::new(), HashMap::new(), &desired, |_| true, 0);
        assert_eq!(got.start, [(global("a"), Start::Fresh)]);
        assert!(got.twins.is_empty() && got.leftovers.is_empty() && got.user_stopped.is_empty());
    }
}
