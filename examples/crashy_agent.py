#!/usr/bin/env python3
"""An agent that crashes: heartbeats like http_heartbeat_agent.py, then exits with code 3 after 20-60 s.

Run it under agentd to watch restarts with backoff, the retry count, and finally the `failed` state.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from agentkit import STOP_SIGNALS, SignalWaiter, log, run_every, signal_name
from http_heartbeat_agent import make_sender

CRASH_CODE = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    parser.add_argument("--min", type=float, default=20.0, help="earliest crash in seconds (default 20)")
    parser.add_argument("--max", type=float, default=60.0, help="latest crash in seconds (default 60)")
    args = parser.parse_args()
    if not 0 <= args.min <= args.max:
        parser.error("need 0 <= --min <= --max")
    return args


def main() -> int:
    args = parse_args()
    waiter = SignalWaiter(STOP_SIGNALS)
    lifetime = random.uniform(args.min, args.max)
    log(f"started pid={os.getpid()}; will crash with exit code {CRASH_CODE} in {lifetime:.1f}s")
    sender = make_sender()
    deadline = time.monotonic() + lifetime
    signo = run_every(waiter, args.interval, sender.beat if sender else lambda: None, until=deadline)
    if signo is not None:
        log(f"got {signal_name(signo)} before crashing, exiting cleanly")
        return 0
    log(f"crashing now with exit code {CRASH_CODE}")
    return CRASH_CODE


if __name__ == "__main__":
    raise SystemExit(main())
