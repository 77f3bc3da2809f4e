"""The sync worker's link to the Manager: node registration and heartbeats, metrics, and agent state sync,
each its own loop (docs/manager-link.md).

States are kept per agent, newest only, until the Manager accepts them; failures back off and never block the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import grpc
import grpc.aio

from supervisor.wire.version import __version__
from supervisor.config.manager_sections import CollectorsSettings, ManagerSettings
from supervisor.wire.messages import AgentView
from supervisor.common.metadata_store import iso_utc
from supervisor.wire.proto import daemon_pb2, daemon_pb2_grpc, manager_pb2, manager_pb2_grpc
from workers.link import WorkerLink
from workers.manager_channel import backoff_for
from workers.node_facts import node_facts
from workers.node_metrics import collectors_for, reading, system_values

log = logging.getLogger("workers.sync")

DEBOUNCE = 1.0  # changes are collected for this long before one SyncAgentStates carries them all
MAX_BATCH = 500  # states per SyncAgentStates call
FINAL_SYNC_TIMEOUT = 1.0  # the best-effort sync at SIGTERM; the parent kills us after 5 s
ERROR_TEXT_MAX = 200
# The Manager cannot delete an agent row over the wire and knows no "removed" status: an agent removed by
# reload is last reported as stopped with pid 0 (docs/manager.md).
REMOVED_STATUS = "stopped"
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
COUNTERS = (
    "register_ok", "register_failed", "heartbeat_ok", "heartbeat_failed", "sync_ok", "sync_failed",
    "states_sent", "metrics_ok", "metrics_failed", "collect_failed", "reregistered",
)



# ----------------------------------------------------------------------------------------------- the link


def _state_key(view: AgentView) -> tuple:
    # last_heartbeat is left out on purpose: it moves every second and rides along with the full syncs.
    return (view.state, view.pid or 0, view.type, view.version or "")


class ManagerSync:
    """Registers the node, beats, reports metrics and keeps the Manager's view of our agents current."""

    def __init__(
        self,
        link: WorkerLink,
        settings: ManagerSettings,
        node_id: str,
        channel: grpc.aio.Channel,
        *,
        tls: str = "off",
        collectors: CollectorsSettings | None = None,
        api_listen: str | None = None,
    ) -> None:
        self.link = link
        self.settings = settings
        self.node_id = node_id
        self.channel = channel
        self.manager = manager_pb2_grpc.ManagerServiceStub(channel)
        self.daemon = daemon_pb2_grpc.DaemonServiceStub(channel)
        self.collectors = collectors_for(collectors if collectors is not None else CollectorsSettings.all_on())
        self.latest: dict[str, manager_pb2.MetricData] = {}  # type -> newest reading, reported every heartbeat
        self.api_listen = api_listen
        self._register_due = math.inf
        self.counters = link.counters
        self.info = link.info
        # agent id -> newest state not yet accepted by the Manager; a newer state replaces an older one.
        self.pending: dict[str, daemon_pb2.AgentState] = {}
        self._seen: dict[str, AgentView] = {}
        self._last_hb: dict[str, int] = {}
        self._debounce_at: float | None = None
        self._retry_at: float | None = None
        self._sync_unreachable = False
        self._full_due = 0.0
        self._wake = asyncio.Event()
        self.sync_backoff = backoff_for(settings)
        self.register_backoff = backoff_for(settings)
        self.registered = False
        self._tasks: list[asyncio.Task] = []
        self._logged_errors: dict[str, str] = {}
        for key in COUNTERS:
            self.counters[key] += 0  # visible as a zero from the first beat
        self.info.update(manager=settings.address or "", node_id=node_id, connected="no", registered="no",
                         pending="0", last_sync="", last_error="", tls=tls,
                         collectors=",".join(c.type for c in self.collectors) or "none")
        link.on_change.append(self._on_change)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._full_due = time.monotonic()  # the whole snapshot goes out at once: nothing the parent knows is lost
        for name, coro in (("node", self._node_loop()), ("metrics", self._metrics_loop()), ("states", self._sync_loop())):
            self._tasks.append(asyncio.create_task(coro, name=name))
        for collector in self.collectors:
            self._tasks.append(asyncio.create_task(self._collect_loop(collector), name=f"collect-{collector.type}"))

    async def close(self) -> None:
        """Stop the loops, try one last short sync of what is pending, and close the channel."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pending:
            try:
                await self._send_pending(timeout=min(FINAL_SYNC_TIMEOUT, self.settings.timeout))
            except Exception:  # best effort: the next worker re-sends from the snapshot
                log.debug("final sync failed", exc_info=True)
        await self.channel.close(grace=None)

    # ----------------------------------------------------------------- gRPC plumbing

    async def _rpc(self, name: str, method, request, timeout: float | None = None):
        """One call with a deadline; returns (response, None) or (None, status code or None for a local error)."""
        try:
            response = await method(request, timeout=timeout or self.settings.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self._error(name, f"{code.name}: {exc.details() or ''}".rstrip(": "))
            self.info["connected"] = "no" if code in UNREACHABLE else "yes"
            return None, code
        except (ValueError, TypeError) as exc:  # a message protobuf refuses to encode: our bug, not the Manager's
            log.exception("%s: cannot build the request", name)
            self._error(name, str(exc))
            return None, None
        self.info["connected"] = "yes"
        return response, None

    def _error(self, call: str, text: str) -> None:
        text = f"{call}: " + " ".join(text.split())
        text = text[:ERROR_TEXT_MAX]
        # One line per call kind and problem, not one per retry of a long outage.
        if self._logged_errors.get(call) != text:
            self._logged_errors[call] = text
            log.warning("manager %s: %s", self.settings.address, text)
        self.info["last_error"] = text
        self.info["last_error_at"] = iso_utc()

    def _ok(self, call: str) -> None:
        if self._logged_errors.pop(call, None) is not None:
            log.info("manager %s: %s works again", self.settings.address, call)

    # ----------------------------------------------------------------- node: register + heartbeat

    async def register(self) -> bool:
        facts = await asyncio.to_thread(node_facts, advertise_ip=self.settings.advertise_ip, api_listen=self.api_listen)
        request = manager_pb2.RegisterNodeRequest(
            node_id=self.node_id, hostname=facts.hostname, ip=facts.ip, os=facts.os, arch=facts.arch,
            labels=dict(self.settings.labels), daemon_version=__version__, agent_version="",
        )
        response, _code = await self._rpc("RegisterNode", self.manager.RegisterNode, request)
        if response is not None and not response.success:
            self._error("RegisterNode", f"refused: {response.message}")
        if response is None or not response.success:
            self.counters["register_failed"] += 1
            return False
        self.counters["register_ok"] += 1
        self._ok("RegisterNode")
        periodic = self.registered
        if periodic:
            self.counters["reregistered"] += 1
        self._register_due = time.monotonic() + self.settings.register_interval
        self.registered = True
        self.info["registered"] = "yes"
        log.log(logging.DEBUG if periodic else logging.INFO, "registered node %s with the Manager at %s (%s, %s, %s/%s)",
                self.node_id, self.settings.address, facts.hostname, facts.ip, facts.os, facts.arch)
        return True

    async def heartbeat(self) -> bool:
        request = manager_pb2.HeartbeatRequest(node_id=self.node_id, timestamp=int(time.time()))
        response, code = await self._rpc("Heartbeat", self.manager.Heartbeat, request)
        if response is not None and response.success:
            self.counters["heartbeat_ok"] += 1
            self._ok("Heartbeat")
            return True
        self.counters["heartbeat_failed"] += 1
        if response is not None or code == grpc.StatusCode.NOT_FOUND:
            # The real Manager's wording varies; any refusal means "register again".
            if response is not None:
                self._error("Heartbeat", f"refused: {response.message}")
            log.info("the Manager does not know node %s; registering again", self.node_id)
            self.registered = False
            self.info["registered"] = "no"
        return False

    async def _node_loop(self) -> None:
        while True:
            if not self.registered:
                if not await self.register():
                    await asyncio.sleep(self.register_backoff.next_delay())
                    continue
                self.register_backoff.reset()
                self._manager_reachable(registered=True)
                # A registration is a sign of life too; beating at once could spin against a Manager that refuses beats.
                await asyncio.sleep(self.settings.heartbeat_interval)
                continue
            if time.monotonic() >= self._register_due:
                # A Manager that lost the node re-creates it as "unknown" at the next heartbeat and answers
                # success: only a fresh registration brings its facts back. A failure is retried next beat.
                await self.register()
            if await self.heartbeat():
                self._manager_reachable()
            if self.registered:
                await asyncio.sleep(self.settings.heartbeat_interval)

    def _manager_reachable(self, registered: bool = False) -> None:
        # A sync that failed because the Manager was away (or did not know us) is retried at once, not after its backoff.
        if (self._sync_unreachable or registered) and self._retry_at is not None:
            self._retry_at = time.monotonic()
        self._wake.set()

    # ----------------------------------------------------------------- metrics

    async def _collect_loop(self, collector) -> None:
        """Run one collector now and then every its interval, keeping only its newest reading (as the original)."""
        failing = ""
        while True:
            started = time.monotonic()
            try:
                values = await asyncio.to_thread(collector.collect)
            except Exception as exc:  # psutil trouble must not end the loop
                self.counters["collect_failed"] += 1
                # One traceback per kind of trouble, not one per interval of a lasting one.
                if repr(exc) != failing:
                    log.exception("collecting %s metrics failed", collector.type)
                failing = repr(exc)
            else:
                if failing:
                    log.info("collecting %s metrics works again", collector.type)
                failing = ""
                self.latest[collector.type] = reading(collector.type, values)
            await asyncio.sleep(max(0.0, collector.interval - (time.monotonic() - started)))

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            if not self.latest:
                continue  # every collector is off, or none has finished its first run yet
            metrics = list(self.latest.values())
            try:
                metrics.append(reading("system", await asyncio.to_thread(system_values)))
            except Exception:
                log.exception("collecting system metrics failed")
                self.counters["collect_failed"] += 1
            request = manager_pb2.ReportMetricsRequest(node_id=self.node_id, metrics=metrics)
            response, _code = await self._rpc("ReportMetrics", self.manager.ReportMetrics, request)
            if response is not None and response.success:
                self.counters["metrics_ok"] += 1
                self._ok("ReportMetrics")
            else:
                # Old metrics are worth little: dropped, not retried.
                self.counters["metrics_failed"] += 1
                if response is not None:
                    self._error("ReportMetrics", f"refused: {response.message}")

    # ----------------------------------------------------------------- agent states

    def state_of(self, agent_id: str) -> daemon_pb2.AgentState:
        """The state of a known agent as the Manager wants it, from the link's current view."""
        view = self.link.agents[agent_id]
        heartbeat = self.link.last_heartbeat.get(agent_id)
        last = int(heartbeat) if heartbeat else 0
        self._last_hb[agent_id] = last
        return daemon_pb2.AgentState(agent_id=agent_id, status=view.state, pid=view.pid or 0, last_heartbeat=last,
                                     type=view.type, version=view.version or "")

    def _removed_state(self, view: AgentView) -> daemon_pb2.AgentState:
        return daemon_pb2.AgentState(agent_id=view.id, status=REMOVED_STATUS, pid=0, last_heartbeat=self._last_hb.pop(view.id, 0),
                                     type=view.type, version=view.version or "")

    def _on_change(self) -> None:
        """Queue every agent whose state, pid, type or version changed, and every agent that went away."""
        agents = self.link.agents
        changed = False
        for agent_id, view in agents.items():
            old = self._seen.get(agent_id)
            if old is None or _state_key(old) != _state_key(view):
                self.pending[agent_id] = self.state_of(agent_id)
                changed = True
            self._seen[agent_id] = view
        # Compared with what we saw, not taken from AgentRemoved: a re-snapshot drops agents without one.
        for agent_id in [a for a in self._seen if a not in agents]:
            self.pending[agent_id] = self._removed_state(self._seen.pop(agent_id))
            changed = True
        if changed:
            if self._debounce_at is None:
                self._debounce_at = time.monotonic() + DEBOUNCE
            self._wake.set()
        self.info["pending"] = str(len(self.pending))

    def _queue_all(self) -> None:
        for agent_id, view in self.link.agents.items():
            self.pending[agent_id] = self.state_of(agent_id)
            self._seen[agent_id] = view
        self.info["pending"] = str(len(self.pending))

    async def _sync_loop(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self._full_due:
                self._queue_all()
                self._full_due = now + self.settings.sync_interval
                self._debounce_at = now
            due = math.inf
            # States of a node the Manager does not know would only be refused: wait for the registration.
            if self.pending and self.registered:
                due = max(now if self._debounce_at is None else self._debounce_at, self._retry_at or now)
            if due <= now:
                await self._send_pending()
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(due, self._full_due) - now)
            except TimeoutError:
                pass

    async def _send_pending(self, timeout: float | None = None) -> bool:
        """Send up to MAX_BATCH pending states; only one call is ever in flight, so order is kept."""
        self._debounce_at = None
        batch: dict[str, daemon_pb2.AgentState] = {}
        for agent_id in list(self.pending)[:MAX_BATCH]:
            # Re-read at send time: the newest state goes out, with a fresh last_heartbeat.
            state = self.state_of(agent_id) if agent_id in self.link.agents else self.pending[agent_id]
            self.pending[agent_id] = state
            batch[agent_id] = state
        request = daemon_pb2.SyncAgentStatesRequest(node_id=self.node_id, states=list(batch.values()))
        response, code = await self._rpc("SyncAgentStates", self.daemon.SyncAgentStates, request, timeout)
        now = time.monotonic()
        if response is None or not response.success:
            if response is not None:
                self._error("SyncAgentStates", f"refused: {response.message}")
            self.counters["sync_failed"] += 1
            self._sync_unreachable = code in UNREACHABLE
            self._retry_at = now + self.sync_backoff.next_delay()
            self.info["pending"] = str(len(self.pending))
            return False
        for agent_id, state in batch.items():
            # A state that changed while the call was in flight is a newer object: it stays pending.
            if self.pending.get(agent_id) is state:
                del self.pending[agent_id]
        self.counters["sync_ok"] += 1
        self._ok("SyncAgentStates")
        self.counters["states_sent"] += len(batch)
        self.sync_backoff.reset()
        self._retry_at = None
        self._sync_unreachable = False
        if any(agent_id not in batch for agent_id in self.pending):
            self._debounce_at = now  # the next chunk of a large set goes out right away
        self.info["pending"] = str(len(self.pending))
        self.info["last_sync"] = iso_utc()
        return True

