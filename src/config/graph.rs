//! Dependency graphs as plain data: nodes `0..n`, `deps[i]` the nodes node
//! `i` depends on. Pure, iterative (a chain of thousands of services must
//! not overflow the stack) and linear in nodes plus edges. The config uses
//! [`find_cycle`] to refuse a cycle; the coordinator uses [`stop_waves`] to
//! stop dependents before what they depend on.

/// A cycle in `deps`, as the nodes along it (`[a, b]` for a → b → a), or
/// `None` when the graph is acyclic. A node depending on itself is `[a]`.
/// Edges to nodes outside `0..deps.len()` are ignored.
pub fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n = deps.len();
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // The depth-first path: (node, index of its next edge to follow).
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(top) = path.last_mut() {
            let node = top.0;
            let Some(&to) = deps[node].get(top.1) else {
                mark[node] = Mark::Done;
                path.pop();
                continue;
            };
            top.1 += 1;
            if to >= n {
                continue;
            }
            match mark[to] {
                Mark::New => {
                    mark[to] = Mark::OnPath;
                    path.push((to, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|&(p, _)| p == to).unwrap_or(0);
                    return Some(path[from..].iter().map(|&(p, _)| p).collect());
                }
                Mark::Done => {}
            }
        }
    }
    None
}

/// The nodes of `set` in waves to stop: every node comes in a later wave
/// than each node of `set` that depends on it, so dependents stop first;
/// the nodes of one wave may stop in parallel. Nodes outside `set` are
/// ignored. On a cycle (which the config refuses) the nodes left over come
/// in one last wave rather than not at all.
pub fn stop_waves(deps: &[Vec<usize>], set: &[usize]) -> Vec<Vec<usize>> {
    let n = deps.len();
    let mut inside = vec![false; n];
    for &i in set.iter().filter(|&&i| i < n) {
        inside[i] = true;
    }
    // For each node, how many nodes of the set that depend on it still run.
    let mut dependents = vec![0usize; n];
    for i in (0..n).filter(|&i| inside[i]) {
        for &d in deps[i].iter().filter(|&&d| d < n && inside[d]) {
            dependents[d] += 1;
        }
    }
    let mut wave: Vec<usize> = (0..n)
        .filter(|&i| inside[i] && dependents[i] == 0)
        .collect();
    let mut waves = Vec::new();
    let mut placed = 0;
    while !wave.is_empty() {
        let mut next = Vec::new();
        for &i in &wave {
            for &d in deps[i].iter().filter(|&&d| d < n && inside[d]) {
                dependents[d] -= 1;
                if dependents[d] == 0 {
                    next.push(d);
                }
            }
        }
        placed += wave.len();
        waves.push(std::mem::replace(&mut wave, next));
    }
    if placed < set.iter().filter(|&&i| i < n).count() {
        let mut done = vec![false; n];
        for &i in waves.iter().flatten() {
            done[i] = true;
        }
        let rest: Vec<usize> = (0..n).filter(|&i| inside[i] && !done[i]).collect();
        waves.push(rest);
    }
    for w in &mut waves {
        w.sort_unstable();
        w.dedup();
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph as written in a table row, and what comes of it.
    type Row<T> = (&'static [&'static [usize]], T);

    #[test]
    fn cycles() {
        let table: [Row<Option<&[usize]>>; 7] = [
            (&[], None),
            (&[&[]], None),
            (&[&[0]], Some(&[0])),
            (&[&[1], &[0]], Some(&[0, 1])),
            (&[&[1], &[2], &[]], None),
            // A diamond is not a cycle.
            (&[&[1, 2], &[3], &[3], &[]], None),
            (&[&[1], &[2], &[1]], Some(&[1, 2])),
        ];
        for (graph, cycle) in table {
            let deps: Vec<Vec<usize>> = graph.iter().map(|d| d.to_vec()).collect();
            assert_eq!(find_cycle(&deps).as_deref(), cycle, "{graph:?}");
        }
    }

    #[test]
    fn waves_stop_dependents_first() {
        // 0 web → 1 api → 2 db; 3 cache alone; 4 worker → 2 db.
        let deps = vec![vec![1], vec![2], vec![], vec![], vec![2]];
        let table: [(&[usize], &[&[usize]]); 5] = [
            (&[0, 1, 2, 3, 4], &[&[0, 3, 4], &[1], &[2]]),
            (&[1, 2], &[&[1], &[2]]),
            (&[2], &[&[2]]),
            (&[], &[]),
            // Out-of-range nodes are ignored.
            (&[0, 9], &[&[0]]),
        ];
        for (set, waves) in table {
            let want: Vec<Vec<usize>> = waves.iter().map(|w| w.to_vec()).collect();
            assert_eq!(stop_waves(&deps, set), want, "{set:?}");
        }
    }

    #[test]
    fn a_cycle_still_stops_everything() {
        let deps = vec![vec![1], vec![0], vec![0]];
        assert_eq!(stop_waves(&deps, &[0, 1, 2]), vec![vec![2], vec![0, 1]]);
    }

    /// 100,000 services in one chain: no stack overflow, linear time (a
    /// quadratic walk would take minutes here).
    #[test]
    fn long_chains() {
        let n = 100_000;
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        assert_eq!(find_cycle(&deps), None);
        let all: Vec<usize> = (0..n).collect();
        let waves = stop_waves(&deps, &all);
        assert_eq!(waves.len(), n);
        assert_eq!(waves[0], vec![0]);
        assert_eq!(waves[n - 1], vec![n - 1]);
        let mut looped = deps.clone();
        looped[n - 1] = vec![0];
        assert_eq!(find_cycle(&looped).map(|c| c.len()), Some(n));
    }
}
