"""What the benchmarks share: one agentd started from this checkout's venv, driven through agentctl --json,
and torn down with this script (PR_SET_PDEATHSIG) even if the script is killed."""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
AGENTD = VENV_BIN / "agentd"
AGENTCTL = VENV_BIN / "agentctl"
PR_SET_PDEATHSIG = 1


def die_with_us() -> None:
    """preexec_fn: if this script is killed outright, the child gets SIGTERM (agentd then shuts down in order)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class BenchDaemon:
    """One agentd under benchmark; subclasses add the waiting and measuring their bench needs."""

    def __init__(self, tmp: Path, config: Path) -> None:
        from supervisor.control_client import ControlClient

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
