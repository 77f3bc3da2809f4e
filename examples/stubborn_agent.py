#!/usr/bin/env python3
"""An agent that will not stop: it and its forked worker ignore SIGTERM (and say so); only SIGKILL ends them.

Under agentd it shows the SIGKILL after `stop_timeout`, sent to the whole process tree, not just the main pid.
It sends no heartbeats, so it is judged running after `start_seconds`. SIGINT (Ctrl-C) does stop it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from agentkit import SignalWaiter, log, signal_name


def stay_alive(waiter: SignalWaiter, role: str, interval: float, worker: int | None = None) -> int:
    """Logs every interval and shrugs off SIGTERM until SIGINT; returns the exit code."""
    next_log = time.monotonic() + interval
    while True:
        signo = waiter.wait(next_log - time.monotonic())
        if signo is None:
            log(f"{role}: still working")
            next_log += interval
        elif signo == signal.SIGTERM:
            log(f"{role}: got SIGTERM, ignoring it (only SIGKILL stops me)")
        elif signo == signal.SIGCHLD and worker is not None:
            if os.waitpid(worker, os.WNOHANG)[0]:
                log(f"{role}: worker pid={worker} is gone")
                worker = None
        elif signo == signal.SIGINT:
            log(f"{role}: got {signal_name(signo)}, exiting")
            if worker is not None:
                os.kill(worker, signal.SIGINT)
                os.waitpid(worker, 0)
            return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between 'still working' lines")
    args = parser.parse_args()
    # The forked worker inherits the blocked signals, so it is covered from its first instruction.
    waiter = SignalWaiter({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    log(f"started pid={os.getpid()}")
    sys.stdout.flush()  # or the fork would duplicate unwritten output
    worker = os.fork()
    if worker == 0:
        log(f"worker started pid={os.getpid()}")
        os._exit(stay_alive(waiter, "worker", args.interval))
    log(f"forked worker pid={worker}")
    return stay_alive(waiter, "main", args.interval, worker)


if __name__ == "__main__":
    raise SystemExit(main())
