#!/usr/bin/env python3
"""One psm binary at N `sleep` services: idle CPU (schedstat, as bench.py
measures it), optionally `strace -c` or `perf record -g` of the coordinator
over the idle window, then `status --json` wall times. Reuses bench.py's
harness (subreaper, start_all, idle_cpu), so everything it starts is ended.

    python3 scripts/idle_profile.py --psm target/release/psm --n 1000 --idle 60
    python3 scripts/idle_profile.py --psm target/release/psm --n 1000 --idle 20 --strace
"""
import argparse, importlib.util, os, shutil, subprocess, sys, tempfile, time, statistics
from pathlib import Path
ap = argparse.ArgumentParser()
ap.add_argument("--psm", required=True)
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--idle", type=float, default=20)
ap.add_argument("--settle", type=float, default=3,
                help="seconds between all N running and the idle window (the first rounds cost more)")
ap.add_argument("--strace", action="store_true")
ap.add_argument("--perf", default=None, help="perf record output file for the idle window")
ap.add_argument("--status", type=int, default=20, help="status --json runs")
ap.add_argument("--keep", action="store_true", help="print root and wait for Enter before down")
o = ap.parse_args()
spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parent / "bench.py")
b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
b.REAPER.become_subreaper()
root = tempfile.mkdtemp(prefix="psm-idle-")
tool = b.Psm(root, Path(o.psm).resolve())
try:
    tool.prepare(o.n)
    daemon, times = b.start_all(tool, o.n, 60 + o.n * 0.2)
    print("start", times, "load", b.loadavg(), flush=True)
    time.sleep(o.settle)
    print("rss_mib", b.rss_mib(daemon))
    aux = None
    if o.strace:
        aux = subprocess.Popen(["strace", "-c", "-f", "-p", str(daemon), "-o", f"{root}/strace.txt"])
    if o.perf:
        aux = subprocess.Popen(["perf", "record", "-g", "-o", o.perf, "-p", str(daemon)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = b.idle_cpu(daemon, o.idle)
    print("idle", r, "load", b.loadavg(), flush=True)
    if aux:
        aux.send_signal(2); aux.wait()
        if o.strace:
            print(open(f"{root}/strace.txt").read())
    ts = []
    for _ in range(o.status):
        t0 = time.perf_counter(); p = subprocess.run(tool.status_cmd(), capture_output=True); ts.append(time.perf_counter() - t0)
    ts.sort()
    print(f"status --json ms: min {1000*ts[0]:.1f} median {1000*statistics.median(ts):.1f} max {1000*ts[-1]:.1f} load {b.loadavg()}")
    if o.keep:
        print("root", root, "daemon", daemon, flush=True); input()
    b.run(tool.stop_cmd(), check=False)
finally:
    b.REAPER.sweep()
    shutil.rmtree(root, ignore_errors=True)
