"""What the benchmarks share: one agentd started from this checkout's venv, driven through agentctl --json,
and torn down with this script (PR_SET_PDEATHSIG) even if the script is killed."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
AGENTD = VENV_BIN / "agentd"
AGENTCTL = VENV_BIN / "agentctl"
PR_SET_PDEATHSIG = 1


def die_with_us() -> None:
    """preexec_fn: if this script is killed outright, the child gets SIGTERM (agentd then shuts down in order)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def marked_pids(marker_env: str, marker: str) -> list[int]:
    """Live processes whose environment carries `marker_env=marker`: one run's agents, nothing else."""
    want = f"{marker_env}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if want in env and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each pid; one already gone is no error."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class BenchDaemon:
    """One agentd under benchmark; subclasses add the waiting and measuring their bench needs."""

    marker_env = "AGENTD_BENCH"  # subclasses: the env var every agent of the run carries

    def __init__(self, tmp: Path, config: Path) -> None:
        from supervisor.ctl.control_client import ControlClient

        self.tmp = tmp
        self.config = config
        self.run_dir = tmp / "run"
        self.log_path = tmp / "agentd.log"
        self.proc: subprocess.Popen | None = None
        self.client = ControlClient(self.run_dir, timeout=30.0)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            # Own session: a Ctrl-C in the terminal reaches only the script, which shuts agentd down in order.
            self.proc = subprocess.Popen(
                [str(AGENTD), "run", "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=die_with_us, cwd=self.tmp,
            )
        finally:
            log.close()

    def agentctl(self, *args: str, timeout: float = 60.0) -> dict:
        out = subprocess.run([str(AGENTCTL), "--run-dir", str(self.run_dir), "--json", *args], capture_output=True, text=True, timeout=timeout)
        try:
            doc = json.loads(out.stdout)
        except ValueError:
            raise RuntimeError(f"agentctl {' '.join(args)}: exit {out.returncode}: {out.stderr.strip() or out.stdout.strip()}") from None
        if isinstance(doc, dict) and doc.get("ok") is False:
            raise RuntimeError(f"agentctl {' '.join(args)}: {doc['error']['message']}")
        return doc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def shutdown(self, marker: str) -> list[str]:
        """agentctl shutdown --stop-agents, then make sure agentd and every agent are gone; returns notes."""
        notes: list[str] = []
        if self.alive():
            try:
                subprocess.run([str(AGENTCTL), "--run-dir", str(self.run_dir), "shutdown", "--stop-agents"], capture_output=True, text=True, timeout=30)
            except subprocess.TimeoutExpired:
                notes.append("agentctl shutdown did not answer in 30 s")
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                notes.append("agentd still running 60 s after shutdown --stop-agents; sending SIGTERM")
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    notes.append("agentd still running 30 s after SIGTERM; sending SIGKILL")
                    self.proc.kill()
                    self.proc.wait()
        deadline = time.monotonic() + 10
        left = marked_pids(self.marker_env, marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = marked_pids(self.marker_env, marker)
        if left:
            notes.append(f"{len(left)} agent processes were left after agentd exited; SIGKILL to pids {left[:10]}{'...' if len(left) > 10 else ''}")
            kill_pids(left)
            time.sleep(0.5)
            left = marked_pids(self.marker_env, marker)
            if left:
                notes.append(f"STILL LEFT: {left}")
        return notes
