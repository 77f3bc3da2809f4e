"""What every worker process does the same way: its command line, logging, dying with the parent,
stopping on SIGTERM/SIGINT, and taking its first snapshot without ignoring a stop meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import socket
import time
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config
from supervisor.common.logging_setup import setup_logging
from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.wire.states import UP_STATES

from workers.link import WorkerLink, die_with_parent

log = logging.getLogger("workers")


FD_HEADROOM = 256  # descriptors beyond the connection limit: ZeroMQ, logs, /proc reads, accepts being refused
# An intake beats every second for this long after it last accepted a heartbeat: the parent's forwarding
# watch (worker_pool.FORWARD_STALL, 5 s) judges a wedged intake from its beats.
FAST_BEATS_AFTER_HEARTBEATS = 10.0


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to `wanted` (at most the hard limit); log what it is.

    Each connection is an fd: at the usual soft limit of 1024 the intake ran out of descriptors before
    its own limits applied (issue 8, break 3). Only intake workers raise it, so agents keep the limits
    agentd was started with (etc/agentd.service: LimitNOFILE=1024:524288, see docs/decisions.md)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            return
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open-file limit is %d (hard limit %d), below the %d this intake may need; raise LimitNOFILE", soft, hard, wanted)


class StartupError(Exception):
    """The worker cannot start; the message says why, for the log (the worker then exits 2)."""


def inherited_listener(fd: int, families: tuple[int, ...], what: str) -> socket.socket:
    """The listening stream socket the parent passed as --listen-fd (it keeps its own copy, so the backlog
    outlives this worker); StartupError naming `what` for anything else, the descriptor left open."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"--listen-fd {fd}: {exc.strerror or exc}") from None
    ok = sock.family in families and sock.type == socket.SOCK_STREAM
    if not ok or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise StartupError(f"--listen-fd {fd}: not a listening {what} socket")
    return sock


class _WorkerArgParser(argparse.ArgumentParser):
    """Resolves --settings-fd into `settings`, so every worker reads its settings one way."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        fd = getattr(ns, "settings_fd", None)
        if fd is not None:
            try:
                ns.settings = read_settings_fd(fd)
            except (OSError, UnicodeDecodeError) as exc:
                self.error(f"--settings-fd {fd}: {exc}")
        return ns


def read_settings_fd(fd: int) -> str:
    """The settings the parent left in an inherited memfd (never on argv, where `ps` shows them to anyone)."""
    chunks, offset = [], 0
    try:
        while chunk := os.pread(fd, 1 << 16, offset):
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def worker_arg_parser(
    module: str, doc: str | None, default_name: str, settings_help: str, *, config_help: str, listen_fd_help: str | None = None
) -> argparse.ArgumentParser:
    """The options every worker takes; with `listen_fd_help`, exactly one of --listen-fd (inherited
    socket) and --config (standalone) is required. A worker adds its own options to the result."""
    parser = _WorkerArgParser(prog=f"python -m workers.{module}", description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--run-dir", type=Path, help="the parent's run dir (events.ipc, state.ipc, control.ipc)")
    parser.add_argument("--name", default=default_name, help="worker name in logs and beats")
    parser.add_argument("--settings", help=settings_help)
    parser.add_argument("--settings-fd", type=int, help="read the --settings JSON from this inherited descriptor (what agentd does)")
    if listen_fd_help is not None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--listen-fd", type=int, help=listen_fd_help)
        source.add_argument("--config", type=Path, help=config_help)
    else:
        parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    return parser


def begin_process(args: argparse.Namespace) -> None:
    """Logging under the worker's name, and death with the parent (the pool passes its pid, since a
    parent that died before our PDEATHSIG was armed would never send a signal)."""
    setup_logging(args.log_level, args.log_format, process_name=args.name)
    parent = os.environ.get("AGENTD_PARENT_PID", "")
    die_with_parent(int(parent) if parent.isdigit() else None)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def start_link(link: WorkerLink, stop: asyncio.Event) -> bool:
    """Start the link (its first snapshot waits for the parent); False, with the link closed, if a
    stop came first."""
    starting = asyncio.create_task(link.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await link.close()
        return False
    stopping.cancel()
    starting.result()
    return True


def json_object(doc):
    """`doc` if it is a JSON object; ValueError (reported as a --settings problem) otherwise."""
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object")
    return doc


def read_worker_settings(args: argparse.Namespace, default, from_config, from_json, *, need_run_dir: bool = True):
    """(run_dir, settings): `default`, then `from_config(config)` for --config, then `from_json(doc, settings)`
    for --settings. The one place a worker reads its settings; logs the problem and returns None when the
    worker cannot start (with `need_run_dir` False the caller words a missing run dir itself)."""
    run_dir, settings = args.run_dir, default
    try:
        if args.config is not None:
            config = load_config(args.config)
            settings = from_config(config)
            run_dir = run_dir or config.daemon.run_dir
        if args.settings is not None:
            settings = from_json(json.loads(args.settings), settings)
    except ConfigError as exc:
        log.error("%s", exc)
        return None
    except (ValueError, ValidationError) as exc:
        log.error("--settings: %s", exc)
        return None
    if run_dir is None and need_run_dir:
        log.error("--run-dir is required without --config")
        return None
    return run_dir, settings


def load_worker_settings(args: argparse.Namespace, model, from_config, *, section: str | None = None):
    """(run_dir, settings) for a worker whose settings are one model: the --settings JSON is the model
    itself, or the object under `section`; None (logged) when the worker cannot start."""

    def from_json(doc, _settings):
        if section is not None:
            doc = json_object(doc).get(section) or {}
        # Validated from Python objects: path types refuse their own JSON dump in JSON mode.
        return model.model_validate(doc)

    return read_worker_settings(args, model(), from_config, from_json)


def intake_beat_fast(link: WorkerLink, clock: Callable[[], float] = time.monotonic) -> Callable[[], bool]:
    """`WorkerLink.beat_fast` for an intake: its silence matters within seconds while some agent expects
    heartbeats (the parent counts a silent intake as an outage, heartbeat_feed.INTAKE_SILENCE) or while it
    takes heartbeats in (the forwarding watch)."""
    last = {"accepted": link.counters.get("accepted", 0), "at": float("-inf")}

    def fast() -> bool:
        now, accepted = clock(), link.counters.get("accepted", 0)
        if accepted != last["accepted"]:
            last["accepted"], last["at"] = accepted, now
        return now - last["at"] < FAST_BEATS_AFTER_HEARTBEATS or any(a.expects_heartbeat and a.state in UP_STATES for a in link.agents.values())

    return fast


async def serve_intake(link: WorkerLink, server, sock, where: str) -> int:
    """Serve an intake on `sock` once the first snapshot is in (else every heartbeat would be refused;
    the parent's backlog holds connections meanwhile), until SIGTERM or SIGINT: exit code 0.

    If forwarding to the parent breaks, the intake stops and returns 1: a worker that cannot forward must
    not go on answering, and its exit makes the pool start a fresh one on the same socket (issue 8)."""
    stop = stop_event()
    limited = RateLimitedLog(log)
    # What escapes to the loop (a failed accept inside asyncio's own server, an unretrieved task error) is
    # logged once per kind and period, never once per connection (issue 8: 168k lines in 15 s).
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: limited.emit("loop:" + str(context.get("message"))[:80], logging.ERROR, "%s",
                                           context.get("message"), exc_info=context.get("exception") or False))
    link.beat_fast = intake_beat_fast(link)
    if not await start_link(link, stop):
        return 0
    await server.start(sock)
    log.info("%s: serving heartbeats on %s (%d agents known)", link.name, where, len(link.agents))
    stopping = asyncio.create_task(stop.wait())
    broken = asyncio.create_task(link.broken.wait())
    await asyncio.wait({stopping, broken}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    broken.cancel()
    code = 1 if link.broken.is_set() else 0
    log.info("%s: stopping%s", link.name, f" ({link.broken_reason})" if code else "")
    await server.close()
    await link.close()
    return code
