"""agentd against supervisord and circus on the lifecycle figures an operator feels, in one interleaved run.

Run by hand with the anchors installed (`make bench` builds .venv-bench with the `bench` extra and runs this):

    .venv-bench/bin/python bench/lifecycle.py [--agents 200] [--trials 3] [--idle-seconds 30] [--no-docs]

For each trial it runs every system in turn (the order rotates between trials) through one cycle, with N
agents that are `/bin/sleep 100NNNN` (a distinct argument each, so every agent's processes are recognisable):

1. start: launch the daemon; time until every agent has exec'd `/bin/sleep` (polled in /proc every ms);
2. settle, then idle: CPU (utime+stime) of the daemon's own processes (the daemon and its descendants that
   are not agents) over `--idle-seconds`, and their summed PSS (smaps_rollup) at its end;
3. `ctl status` wall time, `--status-runs` times;
4. kill -9 of an agent → the pid of its new `/bin/sleep`, for `--kills` agents;
5. `ctl stop all` → every agent process gone (a reaped or zombie process counts as gone);
6. shutdown, then SIGKILL to anything left that carries the run's marker.

It reports medians over the trials (with min–max) and the machine's load: the 1-minute load average and
the CPU that other processes used during each idle window. Any figure it cannot measure fails the whole
run (exit 1, docs untouched): there is no partial table. Every process it starts is stopped on any exit,
and the daemons get SIGTERM through PR_SET_PDEATHSIG should this script be killed outright.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_daemon import die_with_us, kill_pids, marked_pids

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the bench environment (`bench` extra): supervisord and circusd
AGENTD_BIN = ROOT / ".venv" / "bin"  # agentd as installed for everything else (--agentd-venv); it cannot share BIN (both are `supervisor`)
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- lifecycle.py: generated block, begin -->", "<!-- lifecycle.py: generated block, end -->"
MARKER_ENV = "AGENTD_LIFECYCLE_BENCH"
SLEEP = "/bin/sleep"
ARG0 = 1_000_000  # agent i runs `/bin/sleep <ARG0 + i>`
TICK = os.sysconf("SC_CLK_TCK")
TARGETS = {"kill9_ms": 20, "start_s": 0.4, "idle_pct": 0.5, "pss_mib": 80, "status_ms": 100, "stop_s": 0.2}
FIGURES = [
    ("kill9_ms", "kill -9 of an agent → its new pid", "{:.0f} ms", "keep ≤ 20 ms"),
    ("start_s", "start → all {n} exec'd", "{:.2f} s", "≤ 0.4 s"),
    ("idle_pct", "idle CPU, all daemon processes together", "{:.2f} % of a core", "≤ 0.5 %"),
    ("pss_mib", "PSS, all daemon processes together", "{:.0f} MiB", "≤ 80 MiB"),
    ("status_ms", "`ctl status` wall time", "{:.0f} ms", "≤ 100 ms"),
    ("stop_s", "stop all → every process gone", "{:.2f} s", "≤ 0.2 s"),
]


class BenchError(RuntimeError):
    """A figure could not be measured: the run fails rather than report a partial table."""


# ----------------------------------------------------------------------------------------------- /proc


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def agent_index(pid: int) -> int | None:
    """Which agent this process is (by its `/bin/sleep` argument), None if it is not an agent (yet)."""
    parts = cmdline(pid).split(b"\0")
    if len(parts) >= 2 and parts[0] == SLEEP.encode() and parts[1].isdigit():
        return int(parts[1]) - ARG0
    return None


# children() and descendants() restate workers.proc_lineage's walk on purpose: this script runs in .venv-bench,
# where `supervisor` is supervisord's package, so nothing of agentd's (which imports supervisor.*) can load here.
def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    todo, found = [pid], []
    while todo:
        kids = children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise BenchError(f"no Pss in /proc/{pid}/smaps_rollup")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4], total


def loadavg1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# ----------------------------------------------------------------------------------------------- systems


class System:
    """One supervisor under test in one fresh directory; subclasses say how to configure and drive it."""

    name = ""

    def __init__(self, tmp: Path, agents: int, marker: str) -> None:
        self.tmp, self.agents, self.marker = tmp, agents, marker
        self.proc: subprocess.Popen | None = None
        self.write_config()

    def write_config(self) -> None:
        raise NotImplementedError

    def daemon_argv(self) -> list[str]:
        raise NotImplementedError

    def ctl(self, what: str) -> list[str]:
        """argv of `status`, `stop_all`, `shutdown`."""
        raise NotImplementedError

    def status_ok(self, out: subprocess.CompletedProcess) -> bool:
        return out.returncode == 0 and f"a{self.agents - 1:04d}" in out.stdout

    def launch(self) -> None:
        log = open(self.tmp / "daemon.log", "ab")
        try:
            self.proc = subprocess.Popen(self.daemon_argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.tmp,
                                         start_new_session=True, preexec_fn=die_with_us)
        finally:
            log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def agent_pids(self) -> dict[int, int]:
        """agent index → pid of its live `/bin/sleep`, from the daemon's children."""
        out = {}
        for pid in children(self.proc.pid):
            i = agent_index(pid)
            if i is not None:
                out[i] = pid
        return out

    def own_pids(self) -> list[int]:
        """The daemon and every descendant that is not an agent."""
        return [self.proc.pid] + [p for p in descendants(self.proc.pid) if agent_index(p) is None and cmdline(p)]

    def run_ctl(self, what: str, timeout: float = 60.0) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.monotonic()
        out = subprocess.run(self.ctl(what), capture_output=True, text=True, timeout=timeout, cwd=self.tmp, stdin=subprocess.DEVNULL)
        return time.monotonic() - t0, out

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.tmp / "daemon.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop_everything(self) -> list[str]:
        """Shutdown in order, then by force; then SIGKILL whatever still carries the marker. Returns notes."""
        notes = []
        if self.alive():
            try:
                self.run_ctl("shutdown", timeout=30)
            except subprocess.TimeoutExpired:
                notes.append(f"{self.name}: shutdown command did not return in 30 s")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                notes.append(f"{self.name}: daemon still up 30 s after shutdown; SIGTERM, then SIGKILL")
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        left = marked_pids(MARKER_ENV, self.marker)
        if left:
            notes.append(f"{self.name}: {len(left)} processes left after shutdown; SIGKILL")
            kill_pids(left)
        return notes


class Agentd(System):
    name = "agentd"

    def write_config(self) -> None:
        lines = [
            "daemon: {run_dir: run, data_dir: data, log_dir: log, log_level: warning}",
            "heartbeat: {http: {listen: '127.0.0.1:0'}, unix: {path: run/heartbeat.sock}}",
            "agent_defaults:",
            "  stop_timeout: 10s",
            f"  env: {{{MARKER_ENV}: {json.dumps(self.marker)}}}",
            "  health_check: {heartbeat_timeout: null}",
            "agents:",
        ]
        lines += [f"  - {{id: a{i:04d}, binary_path: {SLEEP}, args: ['{ARG0 + i}']}}" for i in range(self.agents)]
        (self.tmp / "agentd.yaml").write_text("\n".join(lines) + "\n")

    def daemon_argv(self) -> list[str]:
        return [str(AGENTD_BIN / "agentd"), "run", "-c", "agentd.yaml"]

    def ctl(self, what: str) -> list[str]:
        verb = {"status": ["status"], "stop_all": ["stop", "--all"], "shutdown": ["shutdown", "--stop-agents"]}[what]
        return [str(AGENTD_BIN / "agentctl"), "--run-dir", "run", *verb]


class Supervisord(System):
    name = "supervisord"

    def write_config(self) -> None:
        t = self.tmp
        lines = [
            "[unix_http_server]", f"file={t}/supervisor.sock", "",
            "[supervisord]", f"logfile={t}/supervisord.log", f"pidfile={t}/supervisord.pid", f"childlogdir={t}/log", "nodaemon=true", "",
            "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{t}/supervisor.sock", "",
        ]
        for i in range(self.agents):
            lines += [f"[program:a{i:04d}]", f"command={SLEEP} {ARG0 + i}", f'environment={MARKER_ENV}="{self.marker}"', ""]
        (t / "log").mkdir()
        (t / "supervisord.conf").write_text("\n".join(lines))

    def daemon_argv(self) -> list[str]:
        return [str(BIN / "supervisord"), "-n", "-c", "supervisord.conf"]

    def ctl(self, what: str) -> list[str]:
        verb = {"status": ["status"], "stop_all": ["stop", "all"], "shutdown": ["shutdown"]}[what]
        return [str(BIN / "supervisorctl"), "-c", "supervisord.conf", *verb]


class Circus(System):
    name = "circus"

    def write_config(self) -> None:
        t = self.tmp
        lines = [
            "[circus]", f"endpoint = ipc://{t}/circus.sock", f"pubsub_endpoint = ipc://{t}/pubsub.sock",
            f"stats_endpoint = ipc://{t}/stats.sock", "check_delay = 1", "",
        ]
        for i in range(self.agents):
            lines += [f"[watcher:a{i:04d}]", f"cmd = {SLEEP}", f"args = {ARG0 + i}", "numprocesses = 1", "",
                      f"[env:a{i:04d}]", f"{MARKER_ENV} = {self.marker}", ""]
        (t / "circus.ini").write_text("\n".join(lines))

    def daemon_argv(self) -> list[str]:
        return [str(BIN / "circusd"), "--log-output", str(self.tmp / "circusd.log"), "circus.ini"]

    def ctl(self, what: str) -> list[str]:
        verb = {"status": ["status"], "stop_all": ["stop"], "shutdown": ["quit"]}[what]
        return [str(BIN / "circusctl"), "--endpoint", f"ipc://{self.tmp}/circus.sock", *verb]


SYSTEMS = {c.name: c for c in (Agentd, Supervisord, Circus)}


# ----------------------------------------------------------------------------------------------- one cycle


def wait_for(what: str, predicate, timeout: float, system: System, poll: float = 0.001):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if not system.alive():
            raise BenchError(f"{system.name} exited with {system.proc.returncode} while waiting for {what}:\n{system.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{system.name}: {what} did not happen within {timeout:g} s:\n{system.log_tail()}")
        time.sleep(poll)


def cycle(system: System, args) -> dict:
    n = args.agents
    r: dict = {"system": system.name, "load_start": loadavg1()}

    # 1. start → every agent exec'd
    # pid → agent index, each read once: an exec'd /bin/sleep keeps its command line. Re-reading all of them
    # every millisecond cost this poller most of a core, taken from the daemon being measured on a 2-core box.
    known: dict[int, int] = {}

    def all_execd() -> bool:
        for pid in children(system.proc.pid):
            if pid not in known and (i := agent_index(pid)) is not None:
                known[pid] = i
        return len(set(known.values())) == n

    t0 = time.monotonic()
    system.launch()
    wait_for(f"all {n} agents exec'd", all_execd, 120, system)
    r["start_s"] = time.monotonic() - t0

    # The control endpoint answers and lists every agent; then let start-up work finish.
    wait_for("ctl status to answer", lambda: system.status_ok(system.run_ctl("status")[1]), 60, system, poll=0.5)
    time.sleep(args.settle)

    # 2. idle CPU and PSS
    pids = system.own_pids()
    before = {p: cpu_s(p) for p in pids}
    busy0, total0 = machine_jiffies()
    loads, w0 = [loadavg1()], time.monotonic()
    while (left := args.idle_seconds - (time.monotonic() - w0)) > 0:
        time.sleep(min(5.0, left))
        loads.append(loadavg1())
    window = time.monotonic() - w0
    after = {p: cpu_s(p) for p in pids}
    busy1, total1 = machine_jiffies()
    if any(v is None for v in after.values()):
        raise BenchError(f"{system.name}: one of its processes {pids} exited during the idle window:\n{system.log_tail()}")
    own = sum(after[p] - before[p] for p in pids)
    r["idle_pct"] = 100.0 * own / window
    r["pss_mib"] = sum(pss_kib(p) for p in pids) / 1024
    r["own_processes"] = len(pids)
    ncpu = os.cpu_count() or 1
    machine_cores = (busy1 - busy0) / (total1 - total0) * ncpu if total1 > total0 else 0.0
    r["others_cores"] = max(0.0, machine_cores - own / window)
    r["load_idle"] = [min(loads), max(loads)]

    # 3. ctl status
    times = []
    for _ in range(args.status_runs):
        took, out = system.run_ctl("status")
        if not system.status_ok(out):
            raise BenchError(f"{system.name}: status failed (exit {out.returncode}): {out.stderr.strip()[:500]}")
        times.append(took)
    r["status_ms"] = statistics.median(times) * 1000

    # 4. kill -9 → new pid
    kills = []
    for k in range(args.kills):
        i = (k * 37 + 11) % n
        old = wait_for(f"agent {i} up", lambda: system.agent_pids().get(i), 30, system)
        t = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(f"agent {i} restarted after kill -9", lambda: (p := system.agent_pids().get(i)) is not None and p != old, 30, system)
        kills.append(time.monotonic() - t)
        time.sleep(0.5)
    r["kill9_ms"] = statistics.median(kills) * 1000
    time.sleep(2.0)  # supervisord and circus count a restarted process as up only after a second

    # 5. stop all → every agent process gone
    wait_for("all agents up before stop", lambda: len(system.agent_pids()) == n, 30, system, poll=0.05)
    t = time.monotonic()
    ctl = subprocess.Popen(system.ctl("stop_all"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=system.tmp, stdin=subprocess.DEVNULL)
    try:
        wait_for("every agent gone after stop all", lambda: not system.agent_pids(), 60, system)
        r["stop_s"] = time.monotonic() - t
        out, err = ctl.communicate(timeout=60)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
    if ctl.returncode != 0:
        raise BenchError(f"{system.name}: stop all exited {ctl.returncode}: {err.strip()[:500]}")
    r["load_end"] = loadavg1()
    return r


# ----------------------------------------------------------------------------------------------- report


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def render(results: list[dict], args, meta: dict) -> str:
    names = [s for s in args.systems]
    by = {s: [r for r in results if r["system"] == s] for s in names}
    head = "| figure | " + " | ".join(f"{s} (median, min–max)" for s in names) + " | target | agentd |"
    lines = [head, "|---|" + "---|" * len(names) + "---|---|"]
    for key, label, fmt, target in FIGURES:
        cells = []
        for s in names:
            med, lo, hi = median_range([r[key] for r in by[s]])
            cells.append(f"{fmt.format(med)} ({fmt.format(lo).split()[0]}–{fmt.format(hi).split()[0]})")
        med = median_range([r[key] for r in by["agentd"]])[0] if "agentd" in by else None
        verdict = "" if med is None else ("**met**" if med <= TARGETS[key] else "**not met**")
        lines.append(f"| {label.format(n=args.agents)} | " + " | ".join(cells) + f" | {target} | {verdict} |")
    notes = [
        "",
        f"Run {meta['when']} on {meta['nproc']} CPUs ({meta['cpu']}), kernel {meta['kernel']}, Python {meta['python']}; "
        f"{meta['versions']}. {args.trials} trials × {len(names)} systems, interleaved (order rotated each trial), "
        f"{args.agents} agents of `/bin/sleep`, idle window {args.idle_seconds:g} s after {args.settle:g} s of settling, "
        f"{args.status_runs} status calls and {args.kills} kills per trial (their median is the trial's figure). "
        f"Command: `{meta['command']}`; took {meta['minutes']:.1f} min.",
        "",
        "Machine load during the run (the box is shared with other engineers' tests):",
        "",
        "| system | load avg (1 min) during idle windows | other processes' CPU during idle windows (cores of 2) | daemon processes |",
        "|---|---|---|---|",
    ]
    for s in names:
        lo = min(r["load_idle"][0] for r in by[s])
        hi = max(r["load_idle"][1] for r in by[s])
        oth = [r["others_cores"] for r in by[s]]
        notes.append(f"| {s} | {lo:.2f}–{hi:.2f} | {statistics.median(oth):.2f} (median; {min(oth):.2f}–{max(oth):.2f}) | {by[s][0]['own_processes']} |")
    return "\n".join(lines + notes)


def write_docs(block: str) -> None:
    text = DOC.read_text()
    section = "\n## Lifecycle: agentd, supervisord and circus\n\n" + BEGIN + "\n" + block + "\n" + END + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + block + "\n" + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n" + section
    DOC.write_text(text)


def versions(systems: list[str]) -> str:
    def ver(pkg: str) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(pkg)
        except PackageNotFoundError:
            raise SystemExit(f"lifecycle.py: {pkg} is not installed in {sys.prefix}: run `make bench` (the `bench` extra)") from None

    found = []
    if "agentd" in systems:
        found.append("agentd " + subprocess.run([str(AGENTD_BIN / "agentctl"), "--version"], capture_output=True, text=True).stdout.split()[-1])
    found += [f"{pkg} {ver(pkg)}" for name, pkg in (("supervisord", "supervisor"), ("circus", "circus")) if name in systems]
    return ", ".join(found)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--systems", default="agentd,supervisord,circus")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after start before the idle window")
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--status-runs", type=int, default=5)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--max-minutes", type=float, default=30.0, help="give up (and fail) past this")
    p.add_argument("--agentd-venv", type=Path, help="run agentd from this venv (e.g. another checkout's, for a before/after); default .venv")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--no-docs", action="store_true", help="do not touch docs/performance.md")
    p.add_argument("--from-json", type=Path, help="no run: render a result saved with --json (and write the docs unless --no-docs)")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for key, value in saved["args"].items():
            setattr(args, key, value)
        block = render(saved["results"], args, saved["meta"])
        print(block)
        if not args.no_docs:
            write_docs(block)
        return 0
    if args.agentd_venv:
        global AGENTD_BIN
        AGENTD_BIN = args.agentd_venv.resolve() / "bin"
    args.systems = args.systems.split(",")
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        p.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    # Only the selected systems' tools: `--systems agentd` needs no bench environment.
    tools = {"agentd": (AGENTD_BIN / "agentd", AGENTD_BIN / "agentctl"), "supervisord": (BIN / "supervisord", BIN / "supervisorctl"),
             "circus": (BIN / "circusd", BIN / "circusctl")}
    for tool in (t for name in args.systems for t in tools[name]):
        if not tool.exists():
            raise SystemExit(f"lifecycle.py: {tool} is missing: run it with the bench environment (`make bench`)")
    meta = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"),
        "kernel": platform.release(), "python": platform.python_version(), "versions": versions(args.systems),
        "command": "python bench/lifecycle.py " + " ".join(sys.argv[1:]),
    }

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    started = time.monotonic()
    results: list[dict] = []
    current: System | None = None
    tmp_root = Path(tempfile.mkdtemp(prefix="lc-", dir="/tmp"))  # short: agentd's ipc paths stay under 100 bytes
    try:
        for trial in range(args.trials):
            order = args.systems[trial % len(args.systems):] + args.systems[:trial % len(args.systems)]
            for name in order:
                if time.monotonic() - started > args.max_minutes * 60:
                    raise BenchError(f"over --max-minutes {args.max_minutes:g}; no table")
                tmp = tmp_root / f"{name}-{trial}"
                tmp.mkdir()
                current = SYSTEMS[name](tmp, args.agents, f"{tmp_root.name}-{name}-{trial}")
                print(f"trial {trial + 1}/{args.trials}: {name} ...", file=sys.stderr, flush=True)
                r = cycle(current, args)
                r["trial"] = trial
                results.append(r)
                print("  " + ", ".join(f"{k} {r[k]:.3g}" for k, *_ in FIGURES) + f", others {r['others_cores']:.2f} cores", file=sys.stderr, flush=True)
                notes = current.stop_everything()
                current = None
                for note in notes:
                    print("  note: " + note, file=sys.stderr)
                shutil.rmtree(tmp, ignore_errors=True)
    except (BenchError, KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
        print(f"lifecycle.py: FAILED, no table: {exc}", file=sys.stderr)
        return 1
    finally:
        if current is not None:
            for note in current.stop_everything():
                print("  note: " + note, file=sys.stderr)
        shutil.rmtree(tmp_root, ignore_errors=True)
    meta["minutes"] = (time.monotonic() - started) / 60
    block = render(results, args, meta)
    print(block)
    if args.json:
        kept = {k: getattr(args, k) for k in ("agents", "trials", "systems", "settle", "idle_seconds", "status_runs", "kills")}
        Path(args.json).write_text(json.dumps({"meta": meta, "args": kept, "results": results}, indent=1))
    if not args.no_docs:
        write_docs(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
