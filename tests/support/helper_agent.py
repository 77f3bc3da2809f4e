#!/usr/bin/env python3
"""Test agent with one mode per behaviour under test; it appends marker lines to a file for the tests to read.

Usage: helper_agent.py MODE --marker FILE [options]. Stdlib only, so it starts fast.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import socket
import sys
import time
import traceback
import urllib.error
import urllib.request
from typing import Callable

# Blocked and received with sigtimedwait, so a signal never interrupts a marker write half-way.
HANDLED_SIGNALS = {
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
}
MIB = 1 << 20
# Children signalled together with their parent exit within milliseconds; reaping them spares zombies.
CHILD_REAP_GRACE = 0.2


def ids() -> tuple[int, int, int]:
    """This process's pid, process group id and session id."""
    return os.getpid(), os.getpgrp(), os.getsid(0)


class Helper:
    """Marker writing, signal handling and child bookkeeping shared by every mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[int] = []
        self.terms_seen = 0
        # O_APPEND makes each single write() land whole at the end, even with forked writers sharing the file.
        self.marker_fd = os.open(args.marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def mark(self, *fields: object) -> None:
        """Appends one marker line in a single write."""
        line = " ".join(str(f) for f in fields).replace("\n", "\\n")
        os.write(self.marker_fd, (line + "\n").encode())

    def say(self, text: str) -> None:
        """Prints a timestamped line to stdout (the agent log under agentd)."""
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        # One write per line: print() writes the newline separately, which splits lines of concurrent writers.
        sys.stdout.write(f"{stamp} helper_agent[{os.getpid()}] {text}\n")
        sys.stdout.flush()

    def wait(self, timeout: float | None) -> bool:
        """Sleeps up to timeout seconds (None = forever) while handling signals; True when asked to stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            info = signal.sigtimedwait(HANDLED_SIGNALS, remaining)
            # SIGSTOP/SIGCONT can end the wait with a garbage si_signo: only our signals count.
            if info is not None and info.si_signo in HANDLED_SIGNALS and self.on_signal(info.si_signo):
                return True

    def poll(self) -> bool:
        """Handles pending signals without sleeping; True when asked to stop."""
        while (info := signal.sigtimedwait(HANDLED_SIGNALS, 0)) is not None:
            if info.si_signo in HANDLED_SIGNALS and self.on_signal(info.si_signo):
                return True
        return False

    def on_signal(self, signo: int) -> bool:
        """Records one signal; True when it means stop."""
        pid = os.getpid()
        if signo == signal.SIGCHLD:
            self.reap()
            return False
        if signo == signal.SIGTERM:
            self.terms_seen += 1
            ignore = self.args.ignore_term or self.terms_seen <= self.args.ignore_terms
            self.mark("TERM", pid)
            self.say("got SIGTERM" + (", ignoring it" if ignore else ", stopping"))
            return not ignore
        if signo == signal.SIGINT:
            self.mark("INT", pid)
            self.say("got SIGINT, stopping")
            return True
        name = signal.Signals(signo).name.removeprefix("SIG")
        self.mark("SIGNAL", pid, name)
        self.say(f"got SIG{name}, carrying on")
        return False

    def reap(self) -> None:
        """Collects exited children so they do not linger as zombies."""
        for child in list(self.children):
            try:
                done, _ = os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                done = child
            if done:
                self.children.remove(child)

    def run_until_stop(self) -> None:
        """Blocks until a stop signal arrives."""
        while not self.wait(None):
            pass

    def fork(self, body: Callable[[], None]) -> int:
        """Forks a child that runs body(); the child never returns into the parent's code."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            self.children.append(pid)
            return pid
        self.children = []
        try:
            body()
        except BaseException:
            traceback.print_exc()
        # body ends in exit(); getting here means it raised, and the child must never run the parent's code.
        os._exit(1)

    def exit(self, code: int) -> None:
        """Writes EXIT, reaps children that are already on their way out, and exits with code."""
        grace_end = time.monotonic() + CHILD_REAP_GRACE
        self.reap()
        while self.children and time.monotonic() < grace_end:
            self.wait(0.02)
            self.reap()
        self.mark("EXIT", os.getpid(), code)
        self.say(f"exiting with code {code}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def heartbeat_payload(args: argparse.Namespace, seq: int) -> dict:
    """One heartbeat; agent_id is left out when the env does not set it, so tests can send it without."""
    payload = {
        "pid": args.claim_pid or os.getpid(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
        "status": "running",
        "version": "helper-1",
        "seq": seq,
    }
    if args.fields_json:  # a buggy or hostile agent: any fields, written as JSON so they can hold "\ud800"
        payload.update(json.loads(args.fields_json))
    if "AGENTD_AGENT_ID" in os.environ:
        payload["agent_id"] = os.environ["AGENTD_AGENT_ID"]
    return payload


# No proxies: the intake is local, and an http_proxy in the test environment must not capture heartbeats.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_heartbeat(payload: dict) -> str:
    """POSTs to AGENTD_HEARTBEAT_URL; returns the HTTP status, or 'error' when there was no answer."""
    url = os.environ.get("AGENTD_HEARTBEAT_URL", "")
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _OPENER.open(request, timeout=2) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (OSError, ValueError, http.client.HTTPException):
        return "error"


class SocketSender:
    """JSON lines over one persistent connection to AGENTD_HEARTBEAT_SOCKET, reconnecting after a failure."""

    def __init__(self) -> None:
        self.path = os.environ.get("AGENTD_HEARTBEAT_SOCKET", "")
        self.sock: socket.socket | None = None

    def send(self, payload: dict) -> str:
        """Sends one heartbeat; returns 'sent' or 'error'."""
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(2)
                self.sock.connect(self.path)
            self.sock.sendall((json.dumps(payload) + "\n").encode())
            return "sent"
        except OSError:
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            return "error"


def mode_well_behaved(h: Helper) -> None:
    h.run_until_stop()
    h.exit(0)


def mode_crash_on_start(h: Helper) -> None:
    h.exit(h.args.code if h.args.code is not None else 2)


def mode_crash_later(h: Helper) -> None:
    if h.wait(h.args.after):
        h.exit(0)
    h.exit(h.args.code if h.args.code is not None else 3)


def mode_exit_zero(h: Helper) -> None:
    h.wait(h.args.after)
    h.exit(0)


def mode_ignore_term(h: Helper) -> None:
    h.args.ignore_term = True
    mode_well_behaved(h)


def mode_fork_children(h: Helper) -> None:
    def child() -> None:
        h.mark("CHILD", *ids())
        h.say("child running")
        h.run_until_stop()
        h.exit(0)

    for _ in range(h.args.children):
        h.fork(child)
    mode_well_behaved(h)


def _session_leader(h: Helper, message: str):
    """A grandchild that escapes into its own session, marks itself and runs until stopped."""
    def grandchild() -> None:
        os.setsid()
        h.mark("GRANDCHILD", *ids())
        h.say(message)
        h.run_until_stop()
        h.exit(0)

    return grandchild


def mode_setsid_grandchild(h: Helper) -> None:
    def middle() -> None:
        h.mark("CHILD", *ids())
        h.fork(_session_leader(h, "grandchild escaped into its own session"))
        h.run_until_stop()
        h.exit(0)

    h.fork(middle)
    mode_well_behaved(h)


def mode_daemonize_escape(h: Helper) -> None:
    """Double fork + setsid with the middle process gone: the grandchild is in neither the agent's
    process group nor its ancestry (it is reparented to init)."""
    def middle() -> None:
        h.mark("CHILD", *ids())
        h.fork(_session_leader(h, "grandchild escaped: own session, parent gone"))
        os._exit(0)

    h.fork(middle)
    mode_well_behaved(h)


def sd_notify(message: str) -> None:
    """One datagram to $NOTIFY_SOCKET, as libsystemd's sd_notify() sends it."""
    path = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


def mode_sd_notify(h: Helper) -> None:
    """READY=1 after --after seconds, STATUS=, then WATCHDOG=1 every --interval for --beats beats
    (0 = for ever); afterwards it stalls, still running. Reports NOTIFY_SOCKET and WATCHDOG_USEC."""
    h.mark("NOTIFY_ENV", os.environ.get("NOTIFY_SOCKET", "-"), os.environ.get("WATCHDOG_USEC", "-"))
    if h.wait(h.args.after):
        h.exit(0)
    while h.args.ready_file and not os.path.exists(h.args.ready_file):  # the test says when
        if h.wait(0.05):
            h.exit(0)
    sd_notify(f"READY=1\nSTATUS=serving {h.args.status_text}")
    h.mark("READY")
    sent = 0
    while h.args.interval > 0 and (h.args.beats == 0 or sent < h.args.beats):
        if h.wait(h.args.interval):
            sd_notify("STOPPING=1")
            h.exit(0)
        sd_notify("WATCHDOG=1")
        sent += 1
    h.mark("STALLED")
    h.run_until_stop()
    sd_notify("STOPPING=1")
    h.exit(0)


def mode_notify_forking(h: Helper) -> None:
    """A classic forking daemon under sd_notify: the launcher forks the real daemon, which sends
    MAINPID=<own pid> and READY=1; the launcher exits once the daemon has sent them."""
    ready_r, ready_w = os.pipe()

    def daemon() -> None:
        os.close(ready_r)
        h.mark("DAEMON", *ids())
        h.mark("START", *ids())  # the agent's main process from now on, as tests that wait for START expect
        sd_notify(f"MAINPID={os.getpid()}\nREADY=1\nSTATUS=forked daemon up")
        os.write(ready_w, b"1")
        os.close(ready_w)
        h.run_until_stop()
        h.exit(0)

    h.fork(daemon)
    os.close(ready_w)
    os.read(ready_r, 1)
    h.children = []  # not ours to reap any more: the daemon outlives us
    h.exit(0)


def mode_escape_heartbeat(h: Helper) -> None:
    """The escaped grandchild of daemonize-escape sends the heartbeats, over the Unix socket."""
    def grandchild() -> None:
        os.setsid()
        h.mark("GRANDCHILD", *ids())
        heartbeat_loop(h, SocketSender().send, 0)
        h.exit(0)

    def middle() -> None:
        h.fork(grandchild)
        os._exit(0)

    h.fork(middle)
    mode_well_behaved(h)


def mode_spew_output(h: Helper) -> None:
    rate, limit = h.args.rate, h.args.count
    start, written = time.monotonic(), 0
    stopped = False
    while not stopped and (limit == 0 or written < limit):
        due = int((time.monotonic() - start) * rate) + 1
        if limit:
            due = min(due, limit)
        # One write per tick keeps high rates cheap; each line is still numbered.
        sys.stdout.write("".join(f"spew {n} pid={os.getpid()}\n" for n in range(written + 1, due + 1)))
        sys.stdout.flush()
        written = max(written, due)
        stopped = h.wait(max(0.001, start + written / rate - time.monotonic()))
    h.mark("SPEWED", os.getpid(), written)
    if not stopped:
        h.run_until_stop()
    h.exit(0)


def heartbeat_loop(h: Helper, send: Callable[[dict], str], beats: int) -> bool:
    """Sends beats heartbeats (0 = forever), one per --interval, marking each; True when stopped."""
    seq = 0
    while beats == 0 or seq < beats:
        seq += 1
        h.mark("HEARTBEAT", seq, send(heartbeat_payload(h.args, seq)))
        if (beats == 0 or seq < beats) and h.wait(h.args.interval):
            return True
    return False


def mode_heartbeat_then_stall(h: Helper) -> None:
    if heartbeat_loop(h, post_heartbeat, h.args.beats):
        h.exit(0)
    h.mark("STALL", os.getpid())
    h.say(f"sent {h.args.beats} heartbeats, now stalling")
    mode_well_behaved(h)


def mode_heartbeat_http(h: Helper) -> None:
    heartbeat_loop(h, post_heartbeat, 0)
    h.exit(0)


def mode_heartbeat_socket(h: Helper) -> None:
    heartbeat_loop(h, SocketSender().send, 0)
    h.exit(0)


def mode_memory_balloon(h: Helper) -> None:
    chunks: list[bytes] = []
    held = 0
    while held < h.args.mb:
        step = min(h.args.step_mb, h.args.mb - held)
        # Repeating a non-zero byte writes every page, so the memory counts as RSS (a zeroed calloc may not).
        chunks.append(b"\x01" * (step * MIB))
        held += step
        h.mark("MEMORY", os.getpid(), held)
        if held < h.args.mb and h.wait(1.0):
            h.exit(0)
    mode_well_behaved(h)


def mode_cpu_burn(h: Helper) -> None:
    deadline = None if h.args.seconds == 0 else time.monotonic() + h.args.seconds
    cpu_budget = h.args.cpu_seconds or None
    counter = 0
    while (deadline is None or time.monotonic() < deadline) and (cpu_budget is None or time.process_time() < cpu_budget):
        for _ in range(20000):
            counter += 1
        if h.poll():
            h.exit(0)
    h.mark("BURN_DONE", os.getpid())
    mode_well_behaved(h)


def mode_print_env(h: Helper) -> None:
    for key in sorted(os.environ):
        if key.startswith("AGENTD_") or key in h.args.show:
            h.mark("ENV", f"{key}={os.environ[key]}")
    h.mark("CWD", os.getcwd())
    h.mark("UID", os.getuid())
    h.mark("GID", os.getgid())
    mode_well_behaved(h)


MODES = {
    "well-behaved": mode_well_behaved,
    "crash-on-start": mode_crash_on_start,
    "crash-later": mode_crash_later,
    "exit-zero": mode_exit_zero,
    "ignore-term": mode_ignore_term,
    "fork-children": mode_fork_children,
    "setsid-grandchild": mode_setsid_grandchild,
    "daemonize-escape": mode_daemonize_escape,
    "sd-notify": mode_sd_notify,
    "notify-forking": mode_notify_forking,
    "escape-heartbeat": mode_escape_heartbeat,
    "spew-output": mode_spew_output,
    "heartbeat-then-stall": mode_heartbeat_then_stall,
    "heartbeat-http": mode_heartbeat_http,
    "heartbeat-socket": mode_heartbeat_socket,
    "memory-balloon": mode_memory_balloon,
    "cpu-burn": mode_cpu_burn,
    "print-env": mode_print_env,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--marker", required=True, help="file to append marker lines to")
    parser.add_argument("--ignore-term", action="store_true", help="record SIGTERM but keep running (any mode)")
    parser.add_argument(
        "--ignore-terms", type=int, default=0, help="ignore only the first N SIGTERMs, stop on the next (any mode)"
    )
    parser.add_argument("--after", type=float, default=1.0, help="seconds before crash-later/exit-zero exit")
    parser.add_argument("--code", type=int, help="exit code for crash-on-start (2) and crash-later (3)")
    parser.add_argument("--children", type=int, default=2, help="children for fork-children")
    parser.add_argument("--rate", type=float, default=100.0, help="lines per second for spew-output")
    parser.add_argument("--count", type=int, default=0, help="spew-output lines in all (0 = no end)")
    parser.add_argument("--beats", type=int, default=3, help="heartbeats before heartbeat-then-stall stalls")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between heartbeats")
    parser.add_argument("--claim-pid", type=int, default=0, help="pid to claim in heartbeats (default: own pid)")
    parser.add_argument("--fields-json", default="", help="JSON object merged into every heartbeat (e.g. a bad version)")
    parser.add_argument("--mb", type=int, default=64, help="MiB memory-balloon grows to")
    parser.add_argument("--step-mb", type=int, default=16, help="MiB memory-balloon adds per second")
    parser.add_argument("--seconds", type=float, default=0.0, help="cpu-burn duration (0 = forever)")
    parser.add_argument("--ready-file", help="sd-notify: send READY=1 only once this file exists (after --after)")
    parser.add_argument("--status-text", default="requests", help="sd-notify: text after 'serving' in STATUS=")
    parser.add_argument("--cpu-seconds", type=float, default=0.0, help="cpu-burn until this much CPU time is used (0 = no limit)")
    parser.add_argument("--show", action="append", default=[], help="extra env var for print-env (repeatable)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.step_mb <= 0 or args.interval < 0:
        parser.error("--rate and --step-mb must be positive, --interval not negative")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # Signals are blocked before START is written: a test that waits for START can signal safely.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    helper = Helper(args)
    helper.mark("START", *ids())
    helper.say(f"START mode={args.mode} pid={os.getpid()} pgid={os.getpgrp()} sid={os.getsid(0)}")
    sys.stderr.write(f"helper_agent[{os.getpid()}] stderr is captured too\n")
    sys.stderr.flush()
    MODES[args.mode](helper)


if __name__ == "__main__":
    main(sys.argv[1:])
