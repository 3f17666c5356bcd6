#!/usr/bin/env python3
"""A/B of psm binaries on start and stop, alternating them so both see the
same machine load (docs/benchmarks.md, issue 11, second session).

Each run: a fresh root of N `sleep 100000` services; `psm up` (wall time
until it returns: every service started), the coordinator's CPU time at that
moment (schedstat of all its threads), then `psm down` (wall time).

    python3 scripts/ab_start_stop.py BIN_A,BIN_B N REPS
"""
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def config(root, n):
    lines = ['[restart]', 'base = "0s"', '']
    for i in range(n):
        lines += ['[[service]]', f'name = "s{i}"', 'type = "global"',
                  'command = ["sleep", "100000"]', '']
    (root / "psm.toml").write_text("\n".join(lines))


def cpu_ms(pid):
    tasks = os.listdir(f"/proc/{pid}/task")
    ns = sum(int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0]) for t in tasks)
    return ns / 1e6


def one(binary, n):
    with tempfile.TemporaryDirectory() as d:
        root = pathlib.Path(d)
        config(root, n)
        env = dict(os.environ)
        env.pop("PSM_ROOT", None)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        subprocess.run([binary, "--root", d, "up"], check=True, env=env, stdout=subprocess.DEVNULL)
        up = time.monotonic() - t0
        pid = int((root / ".psm" / "coordinator.lock").read_text().split()[0])
        cpu = cpu_ms(pid)
        time.sleep(1)
        t0 = time.monotonic()
        subprocess.run([binary, "--root", d, "down"], check=True, env=env, stdout=subprocess.DEVNULL)
        return up, cpu, time.monotonic() - t0, load


def main():
    binaries, n, reps = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    results = {b: [] for b in binaries}
    for _ in range(reps):
        for b in binaries:
            r = one(b, n)
            results[b].append(r)
            print(f"{b}: up={r[0]:.3f}s cpu={r[1]:.0f}ms down={r[2]:.3f}s load={r[3]:.2f}", flush=True)
    for b, rs in results.items():
        cols = [sorted(col) for col in zip(*rs)]
        med = [c[len(c) // 2] for c in cols]
        print(f"median {b} N={n}: up {med[0]:.3f}s ({cols[0][0]:.3f}-{cols[0][-1]:.3f}), "
              f"coordinator CPU {med[1]:.0f}ms ({cols[1][0]:.0f}-{cols[1][-1]:.0f}), "
              f"down {med[2]:.3f}s ({cols[2][0]:.3f}-{cols[2][-1]:.3f}), load {med[3]:.2f}")


if __name__ == "__main__":
    main()
