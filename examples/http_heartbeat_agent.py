#!/usr/bin/env python3
"""A well-behaved agent: POSTs a JSON heartbeat to AGENTD_HEARTBEAT_URL every --interval s, exits 0 on SIGTERM.

It keeps running when the intake is down or answers with an error, and logs such failures at most once a minute.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import urllib.error
import urllib.request

from agentkit import STOP_SIGNALS, FailureLog, ProcStats, SignalWaiter, heartbeat, log, run_every, signal_name

# No proxies: agentd's intake is local, and an http_proxy set in the environment would swallow the heartbeats.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HttpHeartbeat:
    """Sends heartbeats to one URL and logs the outcome without flooding the log."""

    def __init__(self, url: str, agent_id: str) -> None:
        self.url = url
        self.agent_id = agent_id
        self.stats = ProcStats()
        self.failures = FailureLog(f"heartbeat to {url}")
        self.sent = 0

    def beat(self) -> None:
        """Sends one heartbeat; any failure is logged (rate-limited), never raised."""
        body = json.dumps(heartbeat(self.agent_id, self.stats)).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            try:
                with _OPENER.open(request, timeout=2) as response:
                    status, answer = response.status, response.read(4096)
            except urllib.error.HTTPError as exc:
                # An error answer still means the intake is there; its body says why.
                status, answer = exc.code, exc.read(4096)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.failures.failed(str(getattr(exc, "reason", exc)))
            return
        if status != 200:
            self.failures.failed(f"HTTP {status} {answer.decode(errors='replace').strip()[:200]}")
            return
        self.sent += 1
        self.failures.succeeded()
        log(f"heartbeat #{self.sent} accepted (HTTP 200)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    return parser.parse_args()


def make_sender() -> HttpHeartbeat | None:
    """The heartbeat sender agentd's environment asks for, or None (logged) when run outside agentd."""
    url = os.environ.get("AGENTD_HEARTBEAT_URL")
    if not url:
        log("AGENTD_HEARTBEAT_URL is not set; running without heartbeats")
        return None
    return HttpHeartbeat(url, os.environ.get("AGENTD_AGENT_ID", "http-heartbeat-agent"))


def main() -> int:
    args = parse_args()
    waiter = SignalWaiter(STOP_SIGNALS)
    log(f"started pid={os.getpid()} interval={args.interval:g}s url={os.environ.get('AGENTD_HEARTBEAT_URL')}")
    sender = make_sender()
    signo = run_every(waiter, args.interval, sender.beat if sender else lambda: None)
    log(f"got {signal_name(signo)}, exiting cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
