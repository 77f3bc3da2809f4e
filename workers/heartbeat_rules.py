"""Heartbeat validation shared by the HTTP and Unix-socket intake workers (docs/heartbeat-api.md).

`parse_heartbeat` checks the fields; `AgentDirectory` ties a heartbeat to an agent and its process tree.
"""

from __future__ import annotations

import hmac
import json
import json.scanner
import os
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable

from supervisor.common.cgroups import MOUNTINFO, Mount, cgroup2_mounts
from supervisor.config.agent import AGENT_ID_PATTERN
from supervisor.wire.messages import AgentView, Heartbeat
from supervisor.wire.states import UP_STATES
from supervisor.config.units import describe_value

__all__ = [
    "AgentDirectory", "HeartbeatRejected", "NCPU", "decode_json", "parse_heartbeat", "parse_json",
    "report_bad_timestamps",
]

NCPU = os.cpu_count() or 1
CPU_LIMIT = 100 * NCPU
MAX_TEXT = 256
MAX_PID = 2**31 - 1  # the Manager's wire types are int32
MAX_MEMORY = 2**63 - 1  # SQLite and protobuf integers are 64-bit
MAX_TREE_DEPTH = 256  # a ppid chain longer than this is treated as "not in tree" rather than walked on
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)


class HeartbeatRejected(Exception):
    """A heartbeat that is not accepted: the HTTP status to answer, a counter key, and a sentence for people."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"HeartbeatRejected({self.status}, {self.reason!r}, {self.message!r})"


def _invalid(message: str) -> HeartbeatRejected:
    return HeartbeatRejected(400, "invalid", message)


_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # the scanner json.loads itself runs


def parse_json(text: str) -> object:
    """`json.loads(text)`, same result and same errors, minus its wrapper overhead for a text that starts with '{'.

    A heartbeat is one small object, so json.loads' own checks (BOM, leading and trailing whitespace via
    regular expressions) cost about a third of the parse. Anything unusual goes through json.loads itself."""
    if text[:1] == "{":
        try:
            obj, end = _scan_json(text, 0)
        except StopIteration:  # not reached for '{', but json.loads words this error
            return json.loads(text)
        if end == len(text) or not text[end:].strip(" \t\n\r"):
            return obj
    return json.loads(text)  # raises "Extra data", "Expecting value", ... exactly as before


def decode_json(data: bytes | bytearray, what: str = "body") -> object:
    """Bytes to a JSON value, or HeartbeatRejected 400 `invalid` whose message says what is wrong with them.

    Every failure json can raise is mapped here, so an intake never sees a traceback from input: bad UTF-8,
    bad syntax, nesting deeper than the interpreter's stack, integers over Python's 4300-digit limit."""
    try:
        return parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _invalid(f"{what}: not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _invalid(f"{what}: not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid(f"{what}: JSON nested too deeply") from None
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        raise _invalid(f"{what}: a number has too many digits") from None


# ----------------------------------------------------------------------------------------------- fields


@lru_cache(maxsize=512)
def _day_start(year: int, month: int, day: int) -> float | None:
    """Epoch seconds of a UTC midnight, or None for a date that does not exist; cached, heartbeats share days."""
    try:
        return datetime(year, month, day, tzinfo=timezone.utc).timestamp()
    except (ValueError, OverflowError):
        return None


# "YYYY-MM-DDTHH:MM" (exactly as sent, separator included) -> epoch of that minute, or None when it is no valid
# time. Every agent's timestamps share the current minute, so this saves the date arithmetic on nearly every
# heartbeat; it holds derived values only (never a verdict on a whole timestamp) and is bounded.
_minute_starts: dict[str, float | None] = {}
_MINUTE_CACHE_SIZE = 256


def _minute_start(text: str) -> float | None:
    """Epoch of the minute an RFC 3339-shaped text names ("YYYY-MM-DD?HH:MM" prefix), or None if there is no such minute."""
    prefix = text[:16]
    start = _minute_starts.get(prefix, False)
    if start is not False:
        return start  # type: ignore[return-value]
    year, month, day, hour, minute = int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16])
    if hour > 23 or minute > 59:
        start = None
    else:
        midnight = _day_start(year, month, day)
        start = None if midnight is None else midnight + hour * 3600 + minute * 60
    if len(_minute_starts) >= _MINUTE_CACHE_SIZE:
        _minute_starts.clear()
    _minute_starts[prefix] = start
    return start


def _parse_time(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 time (naive means UTC), or None if it is not one."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    # The regex has fixed widths up to the seconds: "YYYY-MM-DD?HH:MM:SS" are text[0:19], whatever follows.
    start = _minute_start(text)
    if start is None:
        return None
    second = int(text[17:19])
    # :60 is a leap second, which RFC 3339 allows; it simply counts as the next second.
    if second > 60:
        return None
    epoch = start + second
    if len(text) > 19:  # a fraction, a zone, or both
        frac, sign = m.group(7, 9)
        if frac:
            epoch += float("0" + frac)
        if sign:
            off_h, off_m = int(m.group(10)), int(m.group(11))
            if off_h > 23 or off_m > 59:
                return None
            offset = off_h * 3600 + off_m * 60
            epoch -= offset if sign == "+" else -offset
    return epoch


def _text(key: str, value: object, problems: list[str], out: dict) -> None:
    # Printable only: a lone surrogate cannot be encoded to UTF-8 on the way to the parent, and control or
    # format characters (escape sequences, bidi overrides) would reach operators' terminals via agentctl.
    if not isinstance(value, str):
        problems.append(f"{key}: expected a string, got {describe_value(value)}")
    elif len(value) > MAX_TEXT:
        problems.append(f"{key}: longer than {MAX_TEXT} characters ({len(value)})")
    elif not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        problems.append(f"{key}: must be printable text; character {value.index(bad)} is {ascii(bad)}")
    else:
        out[key] = value


def parse_heartbeat(obj: object, *, agent_id_required: bool, received_at: float, bad_timestamps: list[str] | None = None) -> dict:
    """Check the known fields of one heartbeat and return them cleaned (keys of `Heartbeat`; null = absent).

    `agent_id_required` (HTTP) makes `pid` required too; `timestamp` defaults to `received_at`. An unparsable
    `timestamp` is not a rejection, as in the original daemon: receipt time is used and the value, described,
    is appended to `bad_timestamps` for the caller to count and log."""
    if not isinstance(obj, dict):
        raise _invalid("expected a JSON object")
    # One pass in field order; problems are collected so that the reply names every bad field.
    get = obj.get
    problems: list[str] = []
    out: dict = {}

    agent_id = get("agent_id")
    if agent_id is None:
        if agent_id_required:
            problems.append("agent_id: required")
    elif not isinstance(agent_id, str):
        problems.append(f"agent_id: expected a string, got {describe_value(agent_id)}")
    elif _AGENT_ID.fullmatch(agent_id) is None:
        problems.append(f"agent_id: not a valid agent id (letters, digits, '_', '.', '-'; at most 64), got {describe_value(agent_id)}")
    else:
        out["agent_id"] = agent_id

    pid = get("pid")
    if type(pid) is int and 0 < pid <= MAX_PID:  # the common case first; the chain below words every other
        out["pid"] = pid
    elif pid is None:
        if agent_id_required:
            problems.append("pid: required")
    elif isinstance(pid, bool) or not isinstance(pid, int):
        problems.append(f"pid: expected an integer, got {describe_value(pid)}")
    elif not 0 < pid <= MAX_PID:
        problems.append(f"pid: must be a positive process id, got {describe_value(pid)}")
    else:
        out["pid"] = pid

    stamp = get("timestamp")
    if stamp is None:
        out["timestamp"] = float(received_at)
    else:
        epoch = _parse_time(stamp) if isinstance(stamp, str) else None
        if epoch is None:
            out["timestamp"] = float(received_at)
            if bad_timestamps is not None:
                bad_timestamps.append(describe_value(stamp))
        else:
            out["timestamp"] = epoch

    value = get("status")
    if value is not None:
        if type(value) is str and len(value) <= MAX_TEXT and value.isprintable():
            out["status"] = value
        else:
            _text("status", value, problems, out)
    value = get("version")
    if value is not None:
        if type(value) is str and len(value) <= MAX_TEXT and value.isprintable():
            out["version"] = value
        else:
            _text("version", value, problems, out)

    cpu = get("cpu")
    if type(cpu) is float and 0 <= cpu <= CPU_LIMIT:
        out["cpu"] = cpu
    elif cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)):
            problems.append(f"cpu: expected a number, got {describe_value(cpu)}")
        elif not 0 <= cpu <= CPU_LIMIT:  # also refuses NaN, which Python's json accepts
            problems.append(f"cpu: must be between 0 and {CPU_LIMIT} (100 × {NCPU} CPUs), got {describe_value(cpu)}")
        else:
            out["cpu"] = float(cpu)

    memory = get("memory")
    if type(memory) is int and 0 <= memory <= MAX_MEMORY:
        out["memory"] = memory
    elif memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, int):
            problems.append(f"memory: expected an integer number of bytes, got {describe_value(memory)}")
        elif not 0 <= memory <= MAX_MEMORY:
            problems.append(f"memory: must be between 0 and {MAX_MEMORY} bytes, got {describe_value(memory)}")
        else:
            out["memory"] = memory

    if problems:
        raise _invalid("; ".join(problems))
    return out


# ----------------------------------------------------------------------------------------------- process tree


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgid) of a live pid from /proc/<pid>/stat, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb", buffering=0) as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and ')'; the fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split(b" ", 3)
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[2])


def _cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb", buffering=0) as f:
            raw = f.read()
    except OSError:
        return None
    for line in raw.split(b"\n"):
        if line.startswith(b"0::"):
            return line[3:].decode("utf-8", "replace")
    return None


@lru_cache(maxsize=1)
def _cgroup2_mounts() -> tuple[Mount, ...]:
    try:
        with open(MOUNTINFO) as f:
            return tuple(cgroup2_mounts(f.read()))
    except OSError:
        return ()


def _in_cgroup(agent: AgentView, name: str | None) -> bool:
    """In cgroup mode, membership of the agent's cgroup (or one below it): no fork or setsid escapes it.
    AgentView.cgroup is the directory; a process's cgroup path is that directory below its mount."""
    if not agent.cgroup or not name:
        return False
    for mount in _cgroup2_mounts():
        top = str(mount.path).rstrip("/") + "/"
        if agent.cgroup.startswith(top):
            own = mount.root.rstrip("/") + "/" + agent.cgroup[len(top):]
            return name == own or name.startswith(own + "/")
    return False


def _group_of(agent: AgentView) -> int | None:
    """The process group whose members count as the agent's, or None when that would be too broad."""
    pgid = agent.pgid if agent.pgid is not None else agent.pid
    # Our own group is the daemon's: matching it would let every daemon process speak for the agent.
    if pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return None
    return pgid


def report_bad_timestamps(directory: AgentDirectory, counters, limited) -> None:
    """Count (`timestamp_replaced`) and log, rate-limited, each heartbeat whose timestamp was replaced by receipt time."""
    counters["timestamp_replaced"] += 0  # present from the first beat, so a zero shows as a zero

    def report(agent_id: str, value: str) -> None:
        counters["timestamp_replaced"] += 1
        limited.warning("timestamp", f"heartbeat of {agent_id}: timestamp {value} is not RFC 3339; used the time of receipt")

    directory.on_bad_timestamp = report


class AgentDirectory:
    """Ties heartbeats to agents: by id and token (HTTP) or by the sender's process tree (Unix socket)."""

    def __init__(self, agents: Callable[[], dict[str, AgentView]], *, cache_size: int = 4096) -> None:
        self._agents = agents
        self._cache_size = cache_size
        # pid -> (agent id, agent pid, generation): verified against the live map on every hit, so a stale
        # entry can only miss, never answer for a restarted or removed agent.
        self._cache: dict[int, tuple[str, int, int]] = {}
        # Called with (agent id, described value) for each accepted heartbeat whose timestamp was replaced.
        self.on_bad_timestamp: Callable[[str, str], None] | None = None
        self._bad: list[str] = []

    @property
    def cached(self) -> int:
        return len(self._cache)

    def invalidate(self) -> None:
        """Forget cached pid lookups; call it whenever the agent map changes (`link.on_change`)."""
        self._cache.clear()

    def _remember(self, pid: int, agent: AgentView) -> None:
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[pid] = (agent.id, agent.pid, agent.generation)  # type: ignore[assignment]

    def _cached(self, pid: int) -> AgentView | None:
        entry = self._cache.get(pid)
        if entry is None:
            return None
        agent = self._agents().get(entry[0])
        if agent is None or agent.pid != entry[1] or agent.generation != entry[2]:
            del self._cache[pid]
            return None
        return agent

    def get(self, agent_id: str) -> AgentView:
        """The agent with this id; 404 `unknown_agent` if there is none."""
        agent = self._agents().get(agent_id)
        if agent is None:
            raise HeartbeatRejected(404, "unknown_agent", f"no agent {agent_id!r}")
        return agent

    def authorize(self, agent_id: str, token: str | None) -> AgentView:
        """The agent, if it exists (404) and `token` matches its heartbeat token when it has one (401)."""
        agent = self.get(agent_id)
        if agent.token:
            if token is None:
                raise HeartbeatRejected(401, "unauthorized", f"agent {agent_id!r} requires a bearer token")
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), agent.token.encode("utf-8")):
                raise HeartbeatRejected(401, "unauthorized", f"wrong token for agent {agent_id!r}")
        return agent

    def check_pid(self, agent: AgentView, pid: int) -> None:
        """Accept pid if it is the agent's live pid, a descendant of it, or in its process group."""
        if agent.state not in UP_STATES or agent.pid is None:
            raise HeartbeatRejected(400, "agent_not_running", f"agent {agent.id!r} is not running (state {agent.state})")
        if pid == agent.pid:
            return
        hit = self._cached(pid)
        if hit is not None and hit.id == agent.id:
            return
        if agent.cgroup and _in_cgroup(agent, _cgroup_of(pid)):
            self._remember(pid, agent)
            return
        group = _group_of(agent)
        current = pid
        for _ in range(MAX_TREE_DEPTH):
            stat = _stat(current)
            if stat is None:
                break
            ppid, pgid = stat
            if ppid == agent.pid or (group is not None and pgid == group):
                self._remember(pid, agent)
                return
            if ppid <= 1:
                break
            current = ppid
        raise HeartbeatRejected(
            400, "pid_not_in_tree", f"pid {pid} is not agent {agent.id!r} (pid {agent.pid}) or one of its descendants"
        )

    def agent_for_pid(self, pid: int) -> AgentView | None:
        """The agent whose process tree (or process group) holds pid: the Unix socket's sender lookup."""
        hit = self._cached(pid)
        if hit is not None:
            return hit
        by_pid: dict[int, AgentView] = {}
        by_group: dict[int, AgentView] = {}
        agents = self._agents()
        name = _cgroup_of(pid)
        if name and "/agent-" in name:
            for part in name.split("/"):
                agent = agents.get(part[len("agent-"):]) if part.startswith("agent-") else None
                if agent is not None and _in_cgroup(agent, name):
                    self._remember(pid, agent)
                    return agent
        for agent in agents.values():
            if agent.pid is not None:
                by_pid[agent.pid] = agent
                group = _group_of(agent)
                if group is not None:
                    by_group[group] = agent
        current = pid
        for _ in range(MAX_TREE_DEPTH):
            agent = by_pid.get(current)
            stat = _stat(current)
            if agent is None and stat is not None:
                agent = by_group.get(stat[1])
            if agent is not None:
                self._remember(pid, agent)
                return agent
            if stat is None or stat[0] <= 1:
                return None
            current = stat[0]
        return None

    def check(
        self,
        obj: object,
        *,
        agent_id_required: bool,
        token: str | None,
        peer_pid: int | None = None,
        received_at: float,
    ) -> dict:
        """One heartbeat through every rule: fields, agent, token (HTTP only), process tree.

        Returns the fields of the `Heartbeat` the parent gets, absent ones left out, as a plain dict: the
        intake workers hand it to the link, which serializes batches of them (building and then dumping a
        pydantic model per heartbeat cost more than all the rules together).
        With `peer_pid` (socket) the peer's tree names the agent and its pid counts, whatever the message claims."""
        bad = self._bad
        bad.clear()
        fields = parse_heartbeat(obj, agent_id_required=agent_id_required, received_at=received_at, bad_timestamps=bad)
        named = fields.get("agent_id")
        if peer_pid is not None:
            agent = self.agent_for_pid(peer_pid)
            if agent is None:
                raise HeartbeatRejected(404, "unknown_agent", f"pid {peer_pid} is not in any agent's process tree")
            if named is not None and named != agent.id:
                raise HeartbeatRejected(
                    400, "pid_not_in_tree", f"agent_id: the sender (pid {peer_pid}) belongs to agent {agent.id!r}, not {named!r}"
                )
            if token is not None:
                agent = self.authorize(agent.id, token)
            pid = peer_pid
        else:
            if named is None:
                raise _invalid("agent_id: required")
            agent = self._agents().get(named)
            if agent is None or agent.token:
                agent = self.authorize(named, token)  # 404, or the token check with its 401 messages
            pid = fields.get("pid")
            if pid is None:
                raise _invalid("pid: required")
        # The agent's own pid is the common case and needs no tree walk; check_pid decides everything else.
        if pid != agent.pid or agent.state not in UP_STATES:
            self.check_pid(agent, pid)
        fields["agent_id"] = agent.id
        fields["pid"] = pid
        fields["generation"] = agent.generation
        if bad and self.on_bad_timestamp is not None:
            self.on_bad_timestamp(agent.id, bad[0])
        return fields

    def validate(
        self,
        obj: object,
        *,
        agent_id_required: bool,
        token: str | None,
        peer_pid: int | None = None,
        received_at: float,
    ) -> Heartbeat:
        """`check`, returned as a validated `Heartbeat` model."""
        return Heartbeat(**self.check(obj, agent_id_required=agent_id_required, token=token, peer_pid=peer_pid, received_at=received_at))
