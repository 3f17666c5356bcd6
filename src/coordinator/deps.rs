//! What `depends-on` decides, as pure functions over instance keys with
//! table tests; the `CoordinatorActor` only carries the answers out.
//!
//! - [`wait_reason`]: whether an instance may start now or must wait, and
//!   the line `psm status` shows for it (`waiting for db`).
//! - [`with_dependents`] / [`with_dependencies`]: what else a stop or a
//!   start of some instances takes along.
//! - [`stop_order`]: the waves a set of instances stops in, dependents first.
//!
//! A graph here maps each instance to the instances it depends on (already
//! resolved in its scope by `Instance::dependency_keys`). Every walk is
//! iterative and linear: a chain of thousands of services costs no stack.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::graph;
use crate::registry::{Scope, ServiceKey};

/// Instance → the instances it depends on.
pub type Graph = BTreeMap<ServiceKey, Vec<ServiceKey>>;

/// Where one dependency stands, for its dependents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepState {
    /// Its current run is ready.
    Ready,
    /// Starting, restarting, in backoff or waiting itself: it will be ready
    /// by itself.
    Coming,
    /// Given up (`failed`): it will not be ready until someone restarts it.
    Failed(String),
    /// Stopped by a user.
    Stopped,
    /// Not running and not going to (e.g. a per-project dependency of a
    /// project whose instance does not exist).
    Absent,
}

/// `None` when every dependency is ready (start now); else the line that
/// says what the instance waits for: `waiting for db, cache (failed after
/// 5 attempts, last exited with code 1; `psm restart cache`)`. `deps` pairs
/// each dependency with its state, in the order the config lists them.
pub fn wait_reason(deps: &[(ServiceKey, DepState)]) -> Option<String> {
    let parts: Vec<String> = deps
        .iter()
        .filter_map(|(key, state)| {
            let label = label(key);
            match state {
                DepState::Ready => None,
                DepState::Coming => Some(label),
                DepState::Failed(why) => {
                    Some(format!("{label} ({why}; `{}`)", command("restart", key)))
                }
                DepState::Stopped => {
                    Some(format!("{label} (stopped; `{}`)", command("start", key)))
                }
                DepState::Absent => Some(format!("{label} (not running)")),
            }
        })
        .collect();
    (!parts.is_empty()).then(|| format!("waiting for {}", parts.join(", ")))
}

/// How messages name an instance: `db`, or `app@/full/project/path` (a
/// project's directory name alone would not tell two `proj` apart).
pub fn label(key: &ServiceKey) -> String {
    match &key.scope {
        Scope::Project(p) => format!("{}@{p}", key.name),
        _ => key.name.clone(),
    }
}

/// The `psm <verb>` command line for one instance, quoted as a shell reads
/// it: a user pastes it as printed.
pub fn command(verb: &str, key: &ServiceKey) -> String {
    // Names are `[A-Za-z0-9._@-]` (validated), never quoted; a path is
    // quoted when it must be. Only a NUL makes quoting fail, and a path
    // cannot hold one.
    let quote = |s: &str| -> String {
        shlex::try_quote(s).map_or_else(|_| s.to_string(), |q| q.into_owned())
    };
    match &key.scope {
        Scope::Project(p) => format!("psm {verb} {} --project {}", key.name, quote(p)),
        _ => format!("psm {verb} {}", key.name),
    }
}

/// `targets` and every instance of `graph` that depends on one of them,
/// directly or not: what a stop of `targets` takes along.
pub fn with_dependents(graph: &Graph, targets: &[ServiceKey]) -> BTreeSet<ServiceKey> {
    let mut dependents: BTreeMap<&ServiceKey, Vec<&ServiceKey>> = BTreeMap::new();
    for (key, deps) in graph {
        for dep in deps {
            dependents.entry(dep).or_default().push(key);
        }
    }
    walk(targets, |k| dependents.get(k).cloned().unwrap_or_default())
}

/// `targets` and everything they depend on in `graph`, directly or not:
/// what a start of `targets` takes along.
pub fn with_dependencies(graph: &Graph, targets: &[ServiceKey]) -> BTreeSet<ServiceKey> {
    walk(targets, |k| {
        graph.get(k).map(|d| d.iter().collect()).unwrap_or_default()
    })
}

fn walk<'a>(
    targets: &[ServiceKey],
    next: impl Fn(&ServiceKey) -> Vec<&'a ServiceKey>,
) -> BTreeSet<ServiceKey> {
    let mut seen: BTreeSet<ServiceKey> = targets.iter().cloned().collect();
    let mut queue: VecDeque<ServiceKey> = targets.iter().cloned().collect();
    while let Some(key) = queue.pop_front() {
        for n in next(&key) {
            if seen.insert(n.clone()) {
                queue.push_back(n.clone());
            }
        }
    }
    seen
}

/// The instances of `set` in waves to stop: each instance in a later wave
/// than every instance of `set` depending on it; one wave stops in
/// parallel. Dependencies outside `set` are ignored.
pub fn stop_order(graph: &Graph, set: &BTreeSet<ServiceKey>) -> Vec<Vec<ServiceKey>> {
    let keys: Vec<&ServiceKey> = set.iter().collect();
    let index: BTreeMap<&ServiceKey, usize> =
        keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let deps: Vec<Vec<usize>> = keys
        .iter()
        .map(|k| {
            graph
                .get(*k)
                .map(|d| d.iter().filter_map(|d| index.get(d).copied()).collect())
                .unwrap_or_default()
        })
        .collect();
    let all: Vec<usize> = (0..keys.len()).collect();
    graph::stop_waves(&deps, &all)
        .into_iter()
        .map(|wave| wave.into_iter().map(|i| keys[i].clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str) -> ServiceKey {
        ServiceKey::global(name)
    }

    fn p(name: &str) -> ServiceKey {
        ServiceKey::new(name, Scope::Project("/p".into()))
    }

    /// web@p → db (global), api@p; api@p → db; worker → db; cache alone.
    fn graph() -> Graph {
        BTreeMap::from([
            (p("web"), vec![g("db"), p("api")]),
            (p("api"), vec![g("db")]),
            (g("worker"), vec![g("db")]),
            (g("db"), vec![]),
            (g("cache"), vec![]),
        ])
    }

    fn set(keys: &[ServiceKey]) -> BTreeSet<ServiceKey> {
        keys.iter().cloned().collect()
    }

    #[test]
    fn who_waits_for_whom() {
        use DepState::*;
        let dep = |l: &str, s: DepState| (g(l), s);
        let table = [
            (vec![], None),
            (vec![dep("db", Ready)], None),
            (
                vec![dep("db", Coming), dep("cache", Ready)],
                Some("waiting for db"),
            ),
            (
                vec![dep("db", Coming), dep("cache", Coming)],
                Some("waiting for db, cache"),
            ),
            (
                vec![dep("db", Failed("failed after 5 attempts".into()))],
                Some("waiting for db (failed after 5 attempts; `psm restart db`)"),
            ),
            (
                vec![dep("db", Stopped)],
                Some("waiting for db (stopped; `psm start db`)"),
            ),
            (
                vec![dep("db", Absent)],
                Some("waiting for db (not running)"),
            ),
            (
                vec![(p("cache"), Failed("failed after 1 attempts".into()))],
                Some("waiting for cache@/p (failed after 1 attempts; `psm restart cache --project /p`)"),
            ),
            (
                vec![(
                    ServiceKey::new("cache", Scope::Project("/my proj/it's".into())),
                    Stopped,
                )],
                Some(r#"waiting for cache@/my proj/it's (stopped; `psm start cache --project "/my proj/it's"`)"#),
            ),
        ];
        for (deps, want) in table {
            assert_eq!(wait_reason(&deps).as_deref(), want, "{deps:?}");
        }
    }

    #[test]
    fn stops_take_dependents_along() {
        let table = [
            (
                vec![g("db")],
                set(&[g("db"), p("api"), p("web"), g("worker")]),
            ),
            (vec![p("api")], set(&[p("api"), p("web")])),
            (vec![p("web")], set(&[p("web")])),
            (vec![g("cache")], set(&[g("cache")])),
            (vec![g("unknown")], set(&[g("unknown")])),
        ];
        for (targets, want) in table {
            assert_eq!(with_dependents(&graph(), &targets), want, "{targets:?}");
        }
    }

    #[test]
    fn starts_take_dependencies_along() {
        let table = [
            (vec![p("web")], set(&[p("web"), p("api"), g("db")])),
            (vec![g("worker")], set(&[g("worker"), g("db")])),
            (vec![g("db")], set(&[g("db")])),
        ];
        for (targets, want) in table {
            assert_eq!(with_dependencies(&graph(), &targets), want, "{targets:?}");
        }
    }

    #[test]
    fn stop_order_is_dependents_first() {
        let all = set(&[g("db"), p("api"), p("web"), g("worker"), g("cache")]);
        let table = [
            (
                all,
                vec![
                    vec![g("cache"), g("worker"), p("web")],
                    vec![p("api")],
                    vec![g("db")],
                ],
            ),
            (
                set(&[g("db"), p("web")]),
                vec![vec![p("web")], vec![g("db")]],
            ),
            (set(&[g("db")]), vec![vec![g("db")]]),
            (set(&[]), vec![]),
        ];
        for (keys, want) in table {
            assert_eq!(stop_order(&graph(), &keys), want, "{keys:?}");
        }
    }

    /// 1,000 services in a chain: every walk is linear and iterative.
    #[test]
    fn long_chain() {
        let n = 1000;
        let key = |i: usize| g(&format!("s{i:04}"));
        let chain: Graph = (0..n)
            .map(|i| (key(i), if i + 1 < n { vec![key(i + 1)] } else { vec![] }))
            .collect();
        let everything = with_dependents(&chain, &[key(n - 1)]);
        assert_eq!(everything.len(), n);
        assert_eq!(with_dependencies(&chain, &[key(0)]).len(), n);
        let waves = stop_order(&chain, &everything);
        assert_eq!(waves.len(), n);
        assert_eq!(waves[0], vec![key(0)]);
        assert_eq!(waves[n - 1], vec![key(n - 1)]);
    }
}
