"""What health judging and resource sampling cost with many agents: CPU and RSS of agentd's processes.

Run by hand (not part of `make test`):

    .venv/bin/python bench/health_load.py [--agents 200] [--seconds 120] [--interval-defaults]

It writes a config into a fresh temp dir under /tmp with N agents that are plain `/bin/sleep` processes
(no heartbeats: `heartbeat_timeout: null`), at the health and resource intervals agentd ships with
(health_check.interval 30 s, resources.interval 10 s) and `heartbeat.http.listen: 127.0.0.1:0`. It starts
`agentd run -c` from the checkout's .venv, waits until every agent is `running`, lets things settle, then
reads utime+stime from /proc/<pid>/stat for the parent and each worker over `--seconds`, with RSS at the
start and end of that window. It also reads the health worker's `samples`/`judged` counters (`agentctl
workers --json`) and counts the history rows written in the window (the `history` verb). At the end it
runs `agentctl shutdown --stop-agents` and checks that every agent process is gone; Ctrl-C, SIGTERM or
an error on the way take the same path. See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_daemon import AGENTD, BenchDaemon, marked_pids  # noqa: E402  (sibling module)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.config.loading import load_config  # noqa: E402
from supervisor.ctl.control_client import ClientError, ControlClient  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
SLEEP = "/bin/sleep"
MARKER_ENV = "AGENTD_HEALTH_LOAD"  # every agent gets it: how leftovers are found, whatever happened to agentd
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TARGET_PCT = 2.0  # "The sampling of 200 agents per interval must cost under 2% of one core on average"


# ----------------------------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of the process (all its threads) in seconds, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat, for the machine's busy share over the window."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        a, b, c = f.read().split()[:3]
    return float(a), float(b), float(c)


def fmt_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


# ----------------------------------------------------------------------------------------------- agentd


def write_config(tmp: Path, agents: int, health_interval: float | None, resources_interval: float | None) -> Path:
    lines = [
        "# written by bench/health_load.py",
        "daemon:",
        "  run_dir: run",
        "  data_dir: data",
        "  log_dir: log",
        "  log_level: info",
        "heartbeat:",
        "  http:",
        "    listen: 127.0.0.1:0",
        "shutdown:",
        "  stop_agents: true      # a SIGTERM from the bench (or its death) stops the agents too",
    ]
    if resources_interval is not None:
        lines += ["resources:", f"  interval: {resources_interval:g}s"]
    lines += [
        "agent_defaults:",
        "  stop_timeout: 5s",
        "  env:",
        f"    {MARKER_ENV}: {json.dumps(str(tmp))}",
        "  log:",
        "    max_size: 1MiB",
        "    keep: 0",
        "  health_check:",
        "    heartbeat_timeout: null   # sleep does not heartbeat",
    ]
    if health_interval is not None:
        lines.append(f"    interval: {health_interval:g}s")
    lines.append("agents:")
    for i in range(agents):
        lines += [f"  - id: a{i:04d}", f"    binary_path: {SLEEP}", '    args: ["100000"]']
    path = tmp / "agentd.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Run(BenchDaemon):
    """One agentd under test, and the cleanup that always runs."""

    marker_env = MARKER_ENV

    def wait_all_running(self, agents: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"agentd exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            status = None
            if (self.run_dir / "control.ipc").exists():
                try:
                    status = self.agentctl("status", timeout=30)
                except (RuntimeError, subprocess.TimeoutExpired):
                    status = None
            if status is not None:
                states: dict[str, int] = {}
                for a in status["agents"]:
                    states[a["state"]] = states.get(a["state"], 0) + 1
                if states.get("running", 0) == agents:
                    return status
                summary = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
            else:
                summary = "control socket not up yet"
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every agent is running after {timeout:g} s ({summary})")
            print(f"  waiting: {summary}", file=sys.stderr)
            time.sleep(2.0)


# ----------------------------------------------------------------------------------------------- measuring


def workers_by_name(doc: dict) -> dict[str, dict]:
    return {w["name"]: w for w in doc["workers"]}


def history_rows(client: ControlClient, ids: list[str], t0: float, t1: float, back: float) -> dict[str, list[dict]]:
    """Rows per id with ts in [t0, t1] (wall clock), through the same `history` verb `agentctl history` uses."""
    out = {}
    for agent_id in ids:
        result = client.call("history", {"id": agent_id, "since": back, "limit": 100_000})
        out[agent_id] = [s for s in result["samples"] if t0 <= s["ts"] <= t1]
    return out


def measure(run: Run, args: argparse.Namespace, pids: dict[str, int]) -> dict:
    cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    rss0 = {name: proc_rss(pid) for name, pid in pids.items()}
    busy0 = machine_busy()
    own0 = time.process_time()
    wall0, t0 = time.time(), time.monotonic()
    loads = [loadavg()]
    while (left := args.seconds - (time.monotonic() - t0)) > 0:
        time.sleep(min(5.0, left))
        loads.append(loadavg())
        if not run.alive():
            raise RuntimeError(f"agentd exited during the measurement:\n{run.log_tail()}")
    t1, wall1 = time.monotonic(), time.time()
    cpu1 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    rss1 = {name: proc_rss(pid) for name, pid in pids.items()}
    busy1 = machine_busy()
    own = time.process_time() - own0
    window = t1 - t0
    rows = {}
    for name in pids:
        if cpu0[name] is None or cpu1[name] is None:
            rows[name] = None  # gone (respawned) during the window
            continue
        used = cpu1[name] - cpu0[name]
        rows[name] = {"pid": pids[name], "cpu_s": used, "cpu_pct": 100.0 * used / window, "rss_start": rss0[name], "rss_end": rss1[name]}
    return {
        "window_s": window, "wall_start": wall0, "wall_end": wall1, "rows": rows,
        "machine_busy_pct": 100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "loadavg_1m": [l[0] for l in loads], "loadavg_start": loads[0], "loadavg_end": loads[-1],
        "bench_cpu_s": own,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120.0, help="measurement window")
    parser.add_argument("--settle", type=float, default=35.0, help="wait after every agent is running, before measuring")
    parser.add_argument("--health-interval", type=float, default=30.0, help="health_check.interval written into the config")
    parser.add_argument("--resources-interval", type=float, default=10.0, help="resources.interval written into the config")
    parser.add_argument("--interval-defaults", action="store_true",
                        help="write no interval keys at all: agentd's built-in defaults apply (the report shows which)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, agentd.log, history.db)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if not AGENTD.exists():
        print(f"{AGENTD} is missing: run `make test` or `make run` once to create .venv", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    marker = str(tmp)
    hi = None if args.interval_defaults else args.health_interval
    ri = None if args.interval_defaults else args.resources_interval
    config_path = write_config(tmp, args.agents, hi, ri)
    cfg = load_config(config_path)
    health_interval = cfg.agent_defaults.health_check.interval
    resources_interval = cfg.resources.interval
    run = Run(tmp, config_path)

    def on_signal(signum, frame):  # SIGTERM/SIGHUP take the same way out as Ctrl-C
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Set explicitly: a shell starts background jobs with SIGINT ignored, and cleanup must still run.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    code = 0
    result = None
    try:
        print(f"temp dir {tmp}; {args.agents} x {SLEEP}; health_check.interval {health_interval:g} s, "
              f"resources.interval {resources_interval:g} s", file=sys.stderr)
        run.start()
        started = time.monotonic()
        status = run.wait_all_running(args.agents, timeout=60 + 0.5 * args.agents)
        print(f"all {args.agents} agents running after {time.monotonic() - started:.1f} s; settling {args.settle:g} s", file=sys.stderr)
        time.sleep(args.settle)
        workers0 = workers_by_name(run.agentctl("workers"))
        pids = {"parent": status["daemon"]["pid"]}
        pids.update({name: w["pid"] for name, w in workers0.items() if w.get("pid")})
        if "health" not in pids:
            raise RuntimeError(f"no running health worker: {workers0}")
        print(f"measuring {args.seconds:g} s: {', '.join(f'{n} {p}' for n, p in pids.items())}", file=sys.stderr)
        m = measure(run, args, pids)
        workers1 = workers_by_name(run.agentctl("workers"))
        h0, h1 = workers0["health"], workers1["health"]
        respawned = [n for n in workers0 if workers1.get(n, {}).get("pid") != workers0[n].get("pid")]
        counters = {k: h1["counters"].get(k, 0) - h0["counters"].get(k, 0) for k in ("samples", "judged", "sample_errors")}
        ids = [a["id"] for a in status["agents"]]
        back = m["window_s"] + args.settle + 120
        hist = history_rows(run.client, ids, m["wall_start"], m["wall_end"], back)
        own_ids = ["agentd/parent", *(f"agentd/{n}" for n in workers0)]
        own_hist = history_rows(run.client, own_ids, m["wall_start"], m["wall_end"], back)
        per_round = args.agents + len(own_ids)
        result = {
            "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "agents": args.agents, "health_interval_s": health_interval, "resources_interval_s": resources_interval,
            "settle_s": args.settle, **m, "health_counters": counters, "samples_per_round": per_round,
            "sample_rounds": counters["samples"] / per_round,
            "history_rows_agents": sum(len(v) for v in hist.values()),
            "history_rows_min_max": [min(len(v) for v in hist.values()), max(len(v) for v in hist.values())],
            "history_rows_agentd": {k: len(v) for k, v in own_hist.items()},
            "self_reported_cpu_pct": {k: (sum(s["cpu"] for s in v if s["cpu"] is not None) / max(1, sum(1 for s in v if s["cpu"] is not None)))
                                      for k, v in own_hist.items()},
            "respawned_workers": respawned,
        }
        report(result)
        if args.json:
            print(json.dumps(result, indent=2))
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'SIGINT'}); cleaning up", file=sys.stderr)
        code = 130
    except (RuntimeError, ClientError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"health_load: {exc}", file=sys.stderr)
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # cleanup must run to the end
        print("shutting down: agentctl shutdown --stop-agents", file=sys.stderr)
        notes = run.shutdown(marker)
        for note in notes:
            print(f"cleanup: {note}", file=sys.stderr)
        left = marked_pids(MARKER_ENV, marker)
        print(f"cleanup: agentd {'exited with ' + str(run.proc.returncode) if run.proc else 'never started'}; "
              f"agent processes left: {len(left)}", file=sys.stderr)
        if left:
            code = code or 1
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


def report(r: dict) -> None:
    w = r["window_s"]
    print()
    print(f"{r['agents']} agents ({SLEEP}), health_check.interval {r['health_interval_s']:g} s, resources.interval "
          f"{r['resources_interval_s']:g} s, window {w:.1f} s after {r['settle_s']:g} s settle")
    m = r["machine"]
    print(f"machine: nproc {m['nproc']}, kernel {m['kernel']}, python {m['python']}, {m['date']}")
    la = r["loadavg_1m"]
    print(f"load average (1 min) during the window: min {min(la):.2f} mean {sum(la) / len(la):.2f} max {max(la):.2f}; "
          f"machine busy {r['machine_busy_pct']:.0f}% of {m['nproc']} cores; this script used {r['bench_cpu_s']:.2f} s CPU")
    print()
    header = f"{'process':<18} {'pid':>7} {'cpu s':>8} {'% of 1 core':>12} {'rss start MiB':>14} {'rss end MiB':>12}"
    print(header)
    print("-" * len(header))
    total = 0.0
    for name, row in r["rows"].items():
        if row is None:
            print(f"{name:<18} {'(respawned during the window: not measured)':>50}")
            continue
        total += row["cpu_s"]
        print(f"{name:<18} {row['pid']:>7} {row['cpu_s']:>8.2f} {row['cpu_pct']:>11.2f}% {fmt_mib(row['rss_start']):>14} {fmt_mib(row['rss_end']):>12}")
    print(f"{'all agentd':<18} {'':>7} {total:>8.2f} {100 * total / w:>11.2f}%")
    print()
    c = r["health_counters"]
    print(f"health worker counters over the window: samples +{c['samples']} ({r['sample_rounds']:.1f} rounds of "
          f"{r['samples_per_round']}), judged +{c['judged']}, sample_errors +{c['sample_errors']}")
    print(f"expected: {w / r['resources_interval_s']:.1f} rounds, {r['agents'] * w / r['health_interval_s']:.0f} judgements")
    lo, hi = r["history_rows_min_max"]
    print(f"history rows in the window: {r['history_rows_agents']} for agents ({lo}..{hi} per agent); "
          + ", ".join(f"{k} {v}" for k, v in r["history_rows_agentd"].items()))
    print("agentd's own cpu as the health worker sampled it (mean of its samples): "
          + ", ".join(f"{k} {v:.2f}%" for k, v in r["self_reported_cpu_pct"].items()))
    if r["respawned_workers"]:
        print(f"WARNING: workers respawned during the run: {', '.join(r['respawned_workers'])}")
    health = r["rows"].get("health")
    if health is not None:
        verdict = "met" if health["cpu_pct"] < TARGET_PCT else f"NOT met (over by {health['cpu_pct'] - TARGET_PCT:.2f} points)"
        print(f"target: health worker under {TARGET_PCT:g}% of one core: {health['cpu_pct']:.2f}% -> {verdict}")


if __name__ == "__main__":
    sys.exit(main())
