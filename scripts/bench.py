#!/usr/bin/env python3
"""psm benchmark harness: psm side by side with supervisord and pm2.

Run it through scripts/bench.sh (which builds psm first):

    scripts/bench.sh --quick                      # CI smoke run: N=20, one rep, psm only
    scripts/bench.sh --peers --n 200,1000 --reps 3

Python 3 standard library only, Linux only (everything is read from /proc).

Every process the harness starts is ended by it: the harness makes itself a
child subreaper (prctl PR_SET_CHILD_SUBREAPER), so daemons that detach
(supervisord, the pm2 God daemon, psm's coordinator) and services orphaned by
a killed daemon are re-parented to the harness instead of init. At the end of
every scenario, on exit, and on SIGINT/SIGTERM/SIGHUP it SIGKILLs the daemons
it recorded, then every remaining descendant (and the process group of each
that leads one), reaps them, and removes the scenario's temporary root.

Workloads (N services, each `sleep 100000`; see docs/benchmarks.md):
  start      start command -> all N running as children of the daemon (/proc),
             and -> the tool itself reports N running (its status command)
  rss        daemon VmRSS once settled
  idle cpu   daemon utime+stime over an idle window, % of one core
  restart    SIGKILL one service -> its replacement runs (10 kills, distinct services)
  status     status command wall time and output bytes (median of 10)
  stop       graceful stop command -> daemon and all services gone
  kill -9    SIGKILL the daemon, run the start command again: survivors, duplicates
"""

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "target" / "bench"
VENV = BENCH_DIR / "venv"
NPM_PREFIX = BENCH_DIR / "npm"
DOC = REPO / "docs" / "benchmarks.md"
SERVICE_ARGS = ["100000"]  # every service is `sleep 100000`
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# psm targets at N=200 (issue 5). At N=1000 each psm figure should be at most
# GROWTH_LIMIT times its N=200 value.
TARGETS = {
    "start_procs": 0.5,
    "start_reported": 0.5,
    "rss_mib": 10.0,
    "idle_cpu": 0.05,
    "restart_median": 3.0,
    "status_ms": 10.0,
    "stop_s": 0.5,
    "kill_dups": 0,
}
GROWTH_LIMIT = 5.0

# (key, label, unit, decimals). Order is the order of the tables.
METRICS = [
    ("start_cmd", "start command returns", "s", 3),
    ("start_procs", "start → all N running (/proc)", "s", 3),
    ("start_reported", "start → tool reports N running", "s", 3),
    ("rss_mib", "daemon RSS, settled", "MiB", 1),
    ("idle_cpu", "daemon idle CPU (utime+stime)", "% of a core", 3),
    ("idle_cpu_ns", "daemon idle CPU (schedstat, ns)", "% of a core", 4),
    ("restart_median", "crash → restart, median of 10", "ms", 1),
    ("restart_p90", "crash → restart, p90 of 10", "ms", 1),
    ("status_ms", "status CLI wall time, median of 10", "ms", 1),
    ("status_bytes", "status CLI output", "bytes", 0),
    ("stop_cmd", "stop command returns", "s", 3),
    ("stop_s", "stop → daemon and services gone", "s", 3),
    ("kill_survived", "daemon SIGKILL + start: services survived", "count", 0),
    ("kill_new", "daemon SIGKILL + start: services started anew", "count", 0),
    ("kill_dups", "daemon SIGKILL + start: duplicates (running − N)", "count", 0),
    ("bare_start", "bare fork/exec loop: all N exec'd", "s", 3),
    ("ratio_start_procs", "start → all N running ÷ bare loop", "×", 2),
    ("ratio_start_reported", "start → tool reports N running ÷ bare loop", "×", 2),
    ("bare_stop", "bare loop: SIGTERM every group, all N reaped", "s", 3),
    ("ratio_stop", "stop → all gone ÷ bare stop", "×", 2),
    ("load", "load average (1 min) during the run", "", 2),
]

# Issue 11: psm against a bare fork/exec loop of the same processes in the
# same run (a ratio is far steadier than an absolute time on a shared machine).
RATIO_TARGETS = {"ratio_start_procs": 1.5, "ratio_start_reported": 2.0}


class HarnessError(Exception):
    """The harness itself could not do its job (a service never started, ...)."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwind through every `finally`."""


def now():
    return time.perf_counter()


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# /proc


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def stat(pid):
    """Fields of /proc/PID/stat after the command name, or None if gone.
    Index i here is stat field i+3 (man 5 proc): state=0, ppid=1, pgrp=2,
    utime=11, stime=12, starttime=19."""
    raw = read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    return raw[raw.rindex(b")") + 2:].split()


def alive(pid):
    s = stat(pid)
    return s is not None and s[0] not in (b"Z", b"X")


def start_time(pid):
    s = stat(pid)
    return int(s[19]) if s else None


def cmdline(pid):
    raw = read(f"/proc/{pid}/cmdline")
    return raw.split(b"\0")[:-1] if raw else []


def is_service(pid):
    argv = cmdline(pid)
    return (
        len(argv) == 2
        and os.path.basename(argv[0]) == b"sleep"
        and argv[1] == SERVICE_ARGS[0].encode()
    )


def children(pid):
    """Direct children of every thread of PID (a child belongs to the thread
    that forked it)."""
    out = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out
    for tid in tids:
        raw = read(f"/proc/{pid}/task/{tid}/children")
        if raw:
            out.update(int(x) for x in raw.split())
    return out


class ServiceCache:
    """Children of a daemon that run the service command. A pid seen running
    `sleep 100000` keeps doing so until it dies, so positives are cached;
    a fresh fork still shows the daemon's cmdline until it execs."""

    def __init__(self):
        self.known = set()

    def services(self, daemon):
        kids = children(daemon)
        out = kids & self.known
        for pid in kids - self.known:
            if is_service(pid):
                self.known.add(pid)
                out.add(pid)
        return out


def proc_table():
    """pid -> (ppid, pgrp, state) for every process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat(name)
            if s:
                table[int(name)] = (int(s[1]), int(s[2]), s[0])
    return table


def descendants(root, table=None):
    table = table if table is not None else proc_table()
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out, table


def live_services_below_me():
    """Every live `sleep 100000` the harness is an ancestor of (its own, not
    another engineer's: the subreaper keeps orphans under the harness)."""
    pids, table = descendants(os.getpid())
    return {p for p in pids if table[p][2] not in (b"Z", b"X") and is_service(p)}


def cpu_ticks(pid):
    s = stat(pid)
    return int(s[11]) + int(s[12])


def cpu_ns(pid):
    """Sum of every current thread's on-CPU time (ns) from schedstat."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        raw = read(f"/proc/{pid}/task/{tid}/schedstat")
        if raw:
            total += int(raw.split()[0])
    return total


def rss_mib(pid):
    raw = read(f"/proc/{pid}/status") or b""
    m = re.search(rb"VmRSS:\s+(\d+) kB", raw)
    if not m:
        raise HarnessError(f"no VmRSS for pid {pid}")
    return int(m.group(1)) / 1024


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


# --------------------------------------------------------------------------
# Ending everything we started


class Reaper:
    """Remembers the daemons the harness saw and ends every process below it."""

    def __init__(self):
        self.daemons = {}  # pid -> start time (identity)
        self.subreaper = False

    def become_subreaper(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_CHILD_SUBREAPER = 36
            self.subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except OSError:
            self.subreaper = False
        if not self.subreaper:
            log("warning: could not become a child subreaper; cleanup relies on recorded pids")

    def track(self, pid):
        st = start_time(pid)
        if st is not None:
            self.daemons[pid] = st

    def _kill(self, pid, also_group):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if also_group:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def sweep(self):
        """SIGKILL recorded daemons first (so none restarts a service we are
        about to kill), then every live descendant and the group it leads."""
        mine = os.getpgrp()
        for pid, st in list(self.daemons.items()):
            if start_time(pid) == st:  # never signal a reused pid
                self._kill(pid, False)
            self.daemons.pop(pid, None)
        deadline = now() + 10
        while True:
            pids, table = descendants(os.getpid())
            live = [p for p in pids if table[p][2] not in (b"Z", b"X")]
            for p in live:
                self._kill(p, table[p][1] == p and p != mine)
            self.reap()
            if not live:
                return
            if now() > deadline:
                raise HarnessError(f"processes survive SIGKILL: {live[:10]}")
            time.sleep(0.02)


REAPER = Reaper()


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


# --------------------------------------------------------------------------
# Tools


def run(argv, env=None, timeout=120, check=True):
    p = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise HarnessError(
            f"{' '.join(map(str, argv))} exited {p.returncode}: "
            f"{p.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return p


def service_names(n):
    return [f"s{i:04d}" for i in range(n)]


class Tool:
    name = "?"
    settings = ""

    def __init__(self, root):
        self.root = Path(root)

    def env(self):
        return None

    def read_pid(self, path):
        raw = read(path)
        try:
            # The coordinator lock holds "<pid> <start time>".
            pid = int(raw.split()[0]) if raw and raw.split() else None
        except ValueError:
            return None
        return pid if pid and alive(pid) else None

    def daemon_pid(self):
        raise NotImplementedError

    def prepare(self, n):
        raise NotImplementedError

    def start_cmd(self):
        raise NotImplementedError

    def status_cmd(self):
        raise NotImplementedError

    def stop_cmd(self):
        raise NotImplementedError

    def running(self, stdout):
        """Number of our services the status output says are running."""
        raise NotImplementedError


class Psm(Tool):
    name = "psm"
    settings = '`[restart] base = "0s"` (immediate restarts); every other setting default'

    def __init__(self, root, binary):
        super().__init__(root)
        self.bin = str(binary)

    def prepare(self, n):
        lines = ['[restart]', 'base = "0s"', '']
        for name in service_names(n):
            lines += ['[[service]]', f'name = "{name}"', 'type = "global"',
                      'command = ["sleep", "100000"]', '']
        (self.root / "psm.toml").write_text("\n".join(lines))

    def daemon_pid(self):
        return self.read_pid(self.root / ".psm" / "coordinator.lock")

    def start_cmd(self):
        return [self.bin, "--root", str(self.root), "up"]

    def status_cmd(self):
        return [self.bin, "--root", str(self.root), "status", "--json"]

    def stop_cmd(self):
        return [self.bin, "--root", str(self.root), "down"]

    def running(self, stdout):
        try:
            details = json.loads(stdout)["details"]
        except (ValueError, KeyError):
            return 0
        return sum(1 for d in details
                   if re.fullmatch(r"s\d{4}", d.get("name", "")) and d.get("status") == "running")

    def version(self):
        return run([self.bin, "--version"]).stdout.decode().strip()


class Supervisord(Tool):
    name = "supervisord"
    settings = ("`autorestart=true`, `startsecs=0` (a started program counts as RUNNING at once), "
                "`startretries`, `stopwaitsecs` and logging default (AUTO log files per program)")

    def conf(self):
        return self.root / "supervisord.conf"

    def prepare(self, n):
        r = self.root
        (r / "logs").mkdir()
        parts = [
            "[supervisord]", f"logfile={r}/supervisord.log", f"pidfile={r}/supervisord.pid",
            f"childlogdir={r}/logs", "minfds=8192", "",
            "[unix_http_server]", f"file={r}/supervisor.sock", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{r}/supervisor.sock", "",
        ]
        for name in service_names(n):
            parts += [f"[program:{name}]", "command=sleep 100000", "autorestart=true",
                      "startsecs=0", ""]
        self.conf().write_text("\n".join(parts))

    def daemon_pid(self):
        return self.read_pid(self.root / "supervisord.pid")

    def start_cmd(self):
        return [str(VENV / "bin" / "supervisord"), "-c", str(self.conf())]

    def status_cmd(self):
        return [str(VENV / "bin" / "supervisorctl"), "-c", str(self.conf()), "status"]

    def stop_cmd(self):
        return [str(VENV / "bin" / "supervisorctl"), "-c", str(self.conf()), "shutdown"]

    def running(self, stdout):
        return len(re.findall(rb"^s\d{4}\s+RUNNING", stdout, re.M))

    @staticmethod
    def version():
        return run([str(VENV / "bin" / "supervisord"), "--version"]).stdout.decode().strip()


class Pm2(Tool):
    name = "pm2"
    settings = ("fork mode, `interpreter: 'none'`, `autorestart: true`, `restart_delay: 0`; "
                "everything else default")

    def env(self):
        # Every pm2 invocation gets this run's PM2_HOME: no daemon in $HOME.
        e = dict(os.environ)
        e["PM2_HOME"] = str(self.root / "pm2")
        e["PATH"] = f"{NPM_PREFIX / 'bin'}:{e.get('PATH', '')}"
        return e

    def eco(self):
        return self.root / "ecosystem.config.js"

    def prepare(self, n):
        apps = [{"name": name, "script": "sleep", "args": "100000", "interpreter": "none",
                 "exec_mode": "fork", "autorestart": True, "restart_delay": 0}
                for name in service_names(n)]
        self.eco().write_text("module.exports = " + json.dumps({"apps": apps}, indent=1) + ";\n")

    def daemon_pid(self):
        return self.read_pid(self.root / "pm2" / "pm2.pid")

    def pm2(self):
        return str(NPM_PREFIX / "bin" / "pm2")

    def start_cmd(self):
        return [self.pm2(), "start", str(self.eco())]

    def status_cmd(self):
        return [self.pm2(), "jlist"]

    def stop_cmd(self):
        return [self.pm2(), "kill"]

    def running(self, stdout):
        try:
            procs = json.loads(stdout)
        except ValueError:
            return 0
        return sum(1 for p in procs if p.get("pm2_env", {}).get("status") == "online")

    @staticmethod
    def version():
        # Read, not `pm2 --version`: that may start a daemon.
        pkg = NPM_PREFIX / "lib" / "node_modules" / "pm2" / "package.json"
        return "pm2 " + json.loads(pkg.read_text())["version"]


# --------------------------------------------------------------------------
# Workloads


def wait_reported(tool, n, t0, deadline):
    while True:
        out = run(tool.status_cmd(), env=tool.env(), check=False).stdout
        if tool.running(out) >= n:
            return now() - t0
        if now() > deadline:
            raise HarnessError(f"{tool.name}: status reports {tool.running(out)}/{n} running")
        time.sleep(0.01)


def start_all(tool, n, timeout):
    """Runs the start command; returns (daemon pid, times) once /proc shows
    all N running under the daemon and the tool reports them running."""
    cache = ServiceCache()
    t0 = now()
    out = open(tool.root / "start.out", "wb")
    p = subprocess.Popen(tool.start_cmd(), env=tool.env(), stdout=out, stderr=subprocess.STDOUT,
                         cwd=tool.root)
    deadline = t0 + timeout
    daemon, t_cmd, t_procs, k = None, None, None, 0
    try:
        while t_procs is None:
            if t_cmd is None and p.poll() is not None:
                t_cmd = now() - t0
                if p.returncode != 0:
                    raise HarnessError(f"{tool.name}: start command exited {p.returncode}: "
                                       f"{(tool.root / 'start.out').read_text()[-500:]}")
            if daemon is None:
                daemon = tool.daemon_pid()
                if daemon:
                    REAPER.track(daemon)
            if daemon:
                k = len(cache.services(daemon))
                if k >= n:
                    t_procs = now() - t0
                    break
            if now() > deadline:
                raise HarnessError(f"{tool.name}: only {k}/{n} services running after {timeout}s "
                                   f"(daemon {daemon})")
            time.sleep(0.002)
        t_reported = wait_reported(tool, n, t0, deadline)
        if t_cmd is None:
            p.wait(timeout=max(1, deadline - now()))
            t_cmd = now() - t0
            if p.returncode != 0:
                raise HarnessError(f"{tool.name}: start command exited {p.returncode}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        out.close()
    return daemon, {"start_cmd": t_cmd, "start_procs": t_procs, "start_reported": t_reported}


def idle_cpu(daemon, seconds):
    t0, ticks0, ns0 = now(), cpu_ticks(daemon), cpu_ns(daemon)
    time.sleep(seconds)
    dt = now() - t0
    ticks, ns = cpu_ticks(daemon) - ticks0, cpu_ns(daemon) - ns0
    return {"idle_cpu": 100 * ticks / CLK_TCK / dt, "idle_cpu_ns": 100 * ns / 1e9 / dt}


def status_cli(tool, n, reps):
    times, size = [], 0
    for _ in range(reps):
        t0 = now()
        p = run(tool.status_cmd(), env=tool.env(), check=False)
        times.append(now() - t0)
        size = len(p.stdout)
        if tool.running(p.stdout) < n:
            raise HarnessError(f"{tool.name}: status shows {tool.running(p.stdout)}/{n} running")
    return {"status_ms": 1000 * statistics.median(times), "status_bytes": size}


def crash_restart(tool, daemon, n, kills):
    """SIGKILL a different service each time; time until a new child of the
    daemon runs the service command."""
    cache = ServiceCache()
    original = sorted(cache.services(daemon))
    if len(original) < n:
        raise HarnessError(f"{tool.name}: {len(original)}/{n} running before the crash test")
    times = []
    for k in range(kills):
        before = cache.services(daemon)
        victim = original[(k * len(original)) // kills]
        deadline = now() + 30
        t0 = now()
        os.kill(victim, signal.SIGKILL)
        while True:
            new = cache.services(daemon) - before
            if new:
                times.append(1000 * (now() - t0))
                break
            if now() > deadline:
                raise HarnessError(f"{tool.name}: no restart within 30 s of killing {victim}")
            time.sleep(0.0002)
        # Let the daemon finish its bookkeeping before the next kill.
        time.sleep(0.2)
    times.sort()
    return {"restart_median": statistics.median(times),
            "restart_p90": times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
            "restart_all": [round(t, 2) for t in times]}


def graceful_stop(tool, daemon):
    services = ServiceCache().services(daemon)
    t0 = now()
    p = subprocess.Popen(tool.stop_cmd(), env=tool.env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    remaining = set(services) | {daemon}
    t_cmd = None
    deadline = t0 + 120
    try:
        while remaining:
            if t_cmd is None and p.poll() is not None:
                t_cmd = now() - t0
            remaining = {pid for pid in remaining if alive(pid)}
            if now() > deadline:
                raise HarnessError(f"{tool.name}: {len(remaining)} processes left 120 s after stop")
            time.sleep(0.002)
        t_gone = now() - t0
        p.wait(timeout=120)
        if t_cmd is None:
            t_cmd = now() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return {"stop_cmd": t_cmd, "stop_s": t_gone}


def kill_and_restart(tool, n, timeout):
    """SIGKILL the daemon, run the start command again, count services."""
    daemon, _ = start_all(tool, n, timeout)
    original = ServiceCache().services(daemon)
    st = start_time(daemon)
    os.kill(daemon, signal.SIGKILL)
    deadline = now() + 10
    while alive(daemon):
        if now() > deadline:
            raise HarnessError(f"{tool.name}: daemon {daemon} survives SIGKILL")
        time.sleep(0.005)
    REAPER.reap()
    REAPER.daemons.pop(daemon, None)
    run(tool.start_cmd(), env=tool.env(), timeout=timeout)
    # A daemonizing start command (supervisord) may return before the new
    # daemon has rewritten its pidfile: wait until it names a new process.
    deadline = now() + timeout
    while True:
        new_daemon = tool.daemon_pid()
        if new_daemon and alive(new_daemon) and not (new_daemon == daemon and start_time(new_daemon) == st):
            break
        if now() > deadline:
            raise HarnessError(f"{tool.name}: no new daemon after the second start")
        time.sleep(0.01)
    REAPER.track(new_daemon)
    wait_reported(tool, n, now(), now() + timeout)
    # Settle: anything the new daemon is going to start has started by now.
    time.sleep(2)
    running = live_services_below_me()
    survived = len(original & running)
    return {"kill_survived": survived, "kill_new": len(running - original),
            "kill_dups": max(0, len(running) - n)}


def bare_loop(n):
    """The physical limit psm is measured against: this process starts the
    same N `sleep 100000` the way psm does (own session, stdin /dev/null,
    output appended to a file), one after another, then SIGTERMs every group
    and reaps them all. Python's `subprocess` uses vfork + exec here; each
    `Popen` returns once the child has exec'd."""
    root = tempfile.mkdtemp(prefix="psm-bench-bare-")
    procs = []
    try:
        with open(os.path.join(root, "out.log"), "ab") as log_file:
            t0 = now()
            for _ in range(n):
                procs.append(subprocess.Popen(["sleep", *SERVICE_ARGS], stdin=subprocess.DEVNULL,
                                              stdout=log_file, stderr=log_file,
                                              start_new_session=True, cwd=root))
            t_start = now() - t0
        t0 = now()
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait()
        t_stop = now() - t0
        return {"bare_start": t_start, "bare_stop": t_stop}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


def ratios(result):
    """psm's figures over the bare loop's of the same repetition."""
    out = {}
    for key, num, den in (("ratio_start_procs", "start_procs", "bare_start"),
                          ("ratio_start_reported", "start_reported", "bare_start"),
                          ("ratio_stop", "stop_s", "bare_stop")):
        if result.get(num) is not None and result.get(den):
            out[key] = result[num] / result[den]
    return out


def scenario(tool_factory, n, opts):
    """One tool, one N, one repetition: every workload, each on a fresh root."""
    result = {}
    loads = [loadavg()]
    timeout = 60 + n * 0.2
    for part in ("main", "kill"):
        root = tempfile.mkdtemp(prefix="psm-bench-")
        tool = tool_factory(root)
        try:
            tool.prepare(n)
            if part == "main":
                result.update(bare_loop(n))
                daemon, times = start_all(tool, n, timeout)
                result.update(times)
                time.sleep(1)  # settle
                result["rss_mib"] = rss_mib(daemon)
                result.update(idle_cpu(daemon, opts.idle))
                loads.append(loadavg())
                result.update(status_cli(tool, n, 10))
                result.update(crash_restart(tool, daemon, n, 10))
                result["rss_after_mib"] = rss_mib(daemon)
                result.update(graceful_stop(tool, daemon))
            else:
                result.update(kill_and_restart(tool, n, timeout))
        finally:
            REAPER.sweep()
            shutil.rmtree(root, ignore_errors=True)
    result.update(ratios(result))
    loads.append(loadavg())
    result["load"] = statistics.median(loads)
    result["load_all"] = loads
    return result


# --------------------------------------------------------------------------
# Peers, machine facts, reporting


def install_peers():
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    if not (VENV / "bin" / "supervisord").exists():
        log("installing supervisor into target/bench/venv (pip)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "supervisor"], check=True)
    if not (NPM_PREFIX / "bin" / "pm2").exists():
        log("installing pm2 into target/bench/npm (npm)")
        subprocess.run(["npm", "install", "-g", "--no-fund", "--no-audit", "--prefix",
                        str(NPM_PREFIX), "pm2"], check=True, stdout=subprocess.DEVNULL)


def git_describe():
    p = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                       capture_output=True, text=True)
    return p.stdout.strip() or "not a git checkout"


def machine(versions):
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.rstrip()
    return {
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu.group(1).strip() if cpu else "unknown",
        "kernel": platform.release(),
        "free": free,
        "versions": versions,
    }


def fmt(x, dec):
    if x is None:
        return "–"
    return f"{x:.{dec}f}" if dec else f"{x:.0f}"


def summary(values, dec):
    """median (min–max) over repetitions."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return fmt(med, dec)
    return f"{fmt(med, dec)} ({fmt(min(vals), dec)}–{fmt(max(vals), dec)})"


def median_of(results, tool, n, key):
    vals = [r[key] for r in results.get((tool, n), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def side_by_side(results, tools, ns):
    out = []
    for n in ns:
        out.append(f"**N = {n}** (median, min–max over repetitions)\n")
        out.append("| workload | unit | " + " | ".join(tools) + " |")
        out.append("|---|---|" + "---|" * len(tools))
        for key, label, unit, dec in METRICS:
            cells = [summary([r.get(key) for r in results.get((t, n), [])], dec) for t in tools]
            out.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def verdict(value, limit):
    if value is None:
        return "–"
    return "met" if value <= limit else "**missed**"


def psm_targets(results, ns):
    """psm against its targets: absolute at N=200, growth ≤5× at larger N."""
    out = []
    base = 200 if 200 in ns else None
    labels = {k: (label, unit, dec) for k, label, unit, dec in METRICS}
    header = "| workload | target at N=200 |"
    sep = "|---|---|"
    for n in ns:
        header += f" N={n} |"
        sep += "---|"
        if base and n != base:
            header += f" ×{n}/{base} (≤{GROWTH_LIMIT:g}×) |"
            sep += "---|"
    if base:
        header += " target met at 200 |"
        sep += "---|"
    out += [header, sep]
    for key, limit in TARGETS.items():
        label, unit, dec = labels[key]
        row = f"| {label} | ≤ {limit:g} {unit} |"
        b = median_of(results, "psm", base, key) if base else None
        for n in ns:
            v = median_of(results, "psm", n, key)
            row += f" {fmt(v, dec)} |"
            if base and n != base:
                if v is None or b is None:
                    row += " – |"
                elif b == 0:
                    row += (" met (0 → 0) |" if v == 0 else f" **{fmt(v, dec)} vs 0** |")
                else:
                    ratio = v / b
                    row += f" {ratio:.1f}× {'' if ratio <= GROWTH_LIMIT else '**missed**'} |"
        if base:
            row += f" {verdict(b, limit)} |"
        out.append(row)
    out += ["", "Against the bare fork/exec loop of the same run (issue 11; median of the "
            "per-repetition ratios):", "",
            "| ratio | target | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---|---|" + "---|" * len(ns)]
    for key, limit in list(RATIO_TARGETS.items()) + [("ratio_stop", None)]:
        label, unit, dec = labels[key]
        cells = []
        for n in ns:
            v = median_of(results, "psm", n, key)
            cells.append(fmt(v, dec) + ("" if limit is None else f" {verdict(v, limit)}"))
        target = "–" if limit is None else f"≤ {limit:g}×"
        out.append(f"| {label} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_section(text, name, body):
    begin, end = f"<!-- BEGIN generated:{name} -->", f"<!-- END generated:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        return pre + block + post
    return text.rstrip() + "\n\n" + block + "\n"


def run_stamp(opts, loads):
    return (f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}: `scripts/bench.sh {' '.join(opts.argv)}` "
            f"(N = {', '.join(map(str, opts.ns))}; {opts.reps} repetition(s); idle window "
            f"{opts.idle:g} s; load average (1 min) during the run {min(loads):.2f}–{max(loads):.2f})")


def machine_md(m):
    v = m["versions"]
    return "\n".join([
        f"- CPU: {m['cpu']}, `nproc` = {m['nproc']}; kernel {m['kernel']}",
        "- versions: " + "; ".join(f"{k}: `{val}`" for k, val in v.items()),
        "- `free -h`:", "", "```", m["free"], "```",
    ])


def registry_bench():
    log("cargo bench --bench registry")
    p = subprocess.run(["cargo", "bench", "--bench", "registry"], cwd=REPO,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise HarnessError(f"cargo bench --bench registry failed: {p.stderr[-800:]}")
    # Its tables, each kept apart by a blank line.
    out, prev = [], False
    for line in p.stdout.splitlines():
        row = line.startswith("|")
        if row:
            if not prev and out:
                out.append("")
            out.append(line)
        prev = row
    return "\n".join(out)


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: N=20, one repetition, psm only, 2 s idle window; "
                         "docs untouched")
    ap.add_argument("--peers", action="store_true",
                    help="also run supervisord and pm2 (installed under target/bench)")
    ap.add_argument("--n", default=None, help="comma-separated service counts (default 200,1000)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--psm", default=str(REPO / "target" / "release" / "psm"),
                    help="psm binary (bench.sh builds target/release/psm)")
    ap.add_argument("--idle", type=float, default=None,
                    help="idle-CPU window in seconds (default 20; --quick: 2)")
    ap.add_argument("--no-registry", action="store_true",
                    help="skip `cargo bench --bench registry`")
    opts = ap.parse_args()
    opts.argv = sys.argv[1:]
    if opts.quick and opts.peers:
        ap.error("--quick runs psm only")
    opts.ns = [int(x) for x in (opts.n or ("20" if opts.quick else "200,1000")).split(",")]
    opts.reps = opts.reps or (1 if opts.quick else 3)
    opts.idle = opts.idle or (2.0 if opts.quick else 20.0)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    REAPER.become_subreaper()

    psm_bin = Path(opts.psm).resolve()
    if not psm_bin.exists():
        raise HarnessError(f"{psm_bin} not found: run scripts/bench.sh, which builds it")
    factories = {"psm": lambda root: Psm(root, psm_bin)}
    versions = {"psm": f"{Psm('.', psm_bin).version()} ({git_describe()})",
                "python": platform.python_version()}
    if opts.peers:
        install_peers()
        factories["supervisord"] = Supervisord
        factories["pm2"] = Pm2
        versions["supervisord"] = Supervisord.version()
        versions["pm2"] = Pm2.version()
        versions["node"] = run(["node", "--version"]).stdout.decode().strip()
    tools = list(factories)

    results = {}
    loads = []
    for n in opts.ns:
        for rep in range(opts.reps):
            # Alternate the order between repetitions so no tool always runs
            # first (cold caches) or last (warm, or after the others' noise).
            order = tools[rep % len(tools):] + tools[:rep % len(tools)]
            for name in order:
                log(f"N={n} rep {rep + 1}/{opts.reps}: {name}")
                r = scenario(factories[name], n, opts)
                loads += r["load_all"]
                results.setdefault((name, n), []).append(r)
                log("  " + ", ".join(f"{k}={v:.3g}" for k, v in r.items()
                                     if isinstance(v, (int, float))))

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "results.json").write_text(json.dumps(
        {f"{t}/{n}": rs for (t, n), rs in results.items()}, indent=1))

    table = side_by_side(results, tools, opts.ns)
    targets = psm_targets(results, opts.ns)
    print(table)
    print(targets)

    if opts.quick:
        return 0
    m = machine(versions)
    stamp = run_stamp(opts, loads)
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    text = write_section(text, "machine", f"{stamp}\n\n{machine_md(m)}")
    psm_only = side_by_side(results, ["psm"], opts.ns)
    text = write_section(text, "psm", f"{stamp}\n\n{targets}\n\n{psm_only}")
    if opts.peers:
        settings = "\n".join(f"- {f('.').name}: {f('.').settings}" for f in factories.values())
        text = write_section(text, "peers", f"{stamp}\n\n{settings}\n\n{table}")
    if not opts.no_registry:
        reg = registry_bench()
        print(reg)
        text = write_section(text, "registry",
                             f"`cargo bench --bench registry`, {time.strftime('%Y-%m-%d')}, "
                             f"load average {loadavg():.2f}\n\n{reg}")
    DOC.write_text(text)
    log(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    except HarnessError as e:
        log(f"error: {e}")
        code = 1
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        code = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            REAPER.sweep()
        except HarnessError as e:
            log(f"error during cleanup: {e}")
            code = code or 1
    sys.exit(code)
