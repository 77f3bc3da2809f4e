"""The pieces carved out of Daemon, each without processes: adoption, reload, notify, log upkeep,
shutdown, control dispatch and the workers' settings (docs/architecture.md, "Module map").

Agents are real state machines over tests/unit/test_lifecycle.py's FakeOps; the clock is a number.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from supervisor.common.metadata_store import AgentRecord
from supervisor.config.loading import parse_config
from supervisor.parent.adoption import Adoption
from supervisor.parent.agent_changes import AgentChanges
from supervisor.parent.agent_identity import Marked
from supervisor.parent.control_dispatch import dispatch
from supervisor.parent.event_log import EventLog
from supervisor.parent.lifecycle import AgentProcess, ProcessHandle
from supervisor.parent.log_files import TRUNCATED_FOR_SPACE
from supervisor.parent.log_upkeep import LogUpkeep, rotation_round
from supervisor.parent.notify_apply import NotifyApplier
from supervisor.parent.notify_socket import Sender
from supervisor.parent.registry import Registry
from supervisor.parent.reload_apply import apply_plan, plan_with_launch_changes
from supervisor.parent.shutdown import Shutdown, let_go, manager_heard
from supervisor.parent.verbs.context import VerbContext
from supervisor.wire.verbs.workers import WorkerInfo
from supervisor.parent.worker_specs import heartbeat_env
from supervisor.wire.protocol import PROTOCOL_VERSION, ControlError, ErrorCode, Request
from supervisor.wire.states import AgentState as S
from supervisor.wire.verbs.status import DaemonStatus
from tests.unit.test_lifecycle import FakeOps, make_spec


def config(*agents: dict):
    return parse_config({"agents": [{"binary_path": "/bin/true", **a} for a in agents]}, source="test.yaml", base_dir=Path("/"))


# ----------------------------------------------------------------------------- adoption


class AdoptionOps(FakeOps):
    """FakeOps that also knows which recorded pids still run."""

    boot_id = "boot"

    def __init__(self, live: set[int]) -> None:
        super().__init__()
        self.live = live

    def adopt(self, agent_id, record, generation, now):
        if record.pid not in self.live:
            return None
        self.alive.add(generation)
        return ProcessHandle(pid=record.pid, pgid=record.pid, create_time=1.0, generation=generation, started_mono=now, started_wall=0.0, adopted=True)

    def leftovers(self, agent_id, record, generation, now):
        return None

    def cgroup_leftovers(self, agent_id, record, generation, now):
        return None

    def runs_configured_command(self, pid, spec):
        return True

    def prelaunch(self, specs):
        self.prelaunched = getattr(self, "prelaunched", []) + [spec.id for spec in specs]

    def drop_prelaunched(self):
        pass


def adoption(live: set[int], marked: dict | None = None):
    ops, registry, deleted = AdoptionOps(live), Registry(), []
    new_agent = lambda spec, record=None: AgentProcess(spec, ops, on_transition=lambda *a: None, record=record)  # noqa: E731
    return Adoption(ops, registry, new_agent, deleted.append, lambda: marked or {}, Path("/data"), lambda: 0.0), registry, ops, deleted


def test_start_up_adopts_a_recorded_live_process_and_starts_the_others():
    load, registry, ops, _ = adoption({4242})
    specs = [make_spec(id="kept"), make_spec(id="gone"), make_spec(id="new")]
    records = {"kept": AgentRecord(id="kept", status="running", pid=4242), "gone": AgentRecord(id="gone", status="running", pid=99)}
    load.load(specs, records, 10.0)
    assert registry.get("kept").state == S.RUNNING and registry.get("kept").handle.pid == 4242
    assert registry.get("gone").state == S.STARTING and registry.get("gone").last_exit.reason == "process vanished while agentd was down"
    assert registry.get("new").state == S.STARTING
    assert [h.generation for h in ops.spawned] == [1, 1]  # one new process each for gone and new, none for kept
    assert ops.prelaunched == ["gone", "new"]  # launched at once, after every adoption check


def test_start_up_adopts_a_marked_process_when_metadata_is_lost():
    marked = {"a1": [Marked(pid=77, ppid=1, pgid=77, sid=77, start_ticks=5)]}
    load, registry, ops, _ = adoption({77}, marked)
    load.load([make_spec(id="a1")], {}, 10.0)
    assert registry.get("a1").handle.pid == 77 and ops.spawned == []


def test_an_interrupted_removal_is_finished_and_a_dead_ones_record_deleted():
    load, registry, ops, deleted = adoption({500})
    records = {"old": AgentRecord(id="old", status="stopping", pid=500), "dead": AgentRecord(id="dead", status="stopping", pid=501),
               "foreign": AgentRecord(id="foreign", status="running", pid=502)}
    load.load([], records, 10.0)
    assert registry.get("old").state == S.STOPPING and registry.get("old").after_stop == "remove"
    assert deleted == ["dead"] and "foreign" not in registry


# ----------------------------------------------------------------------------- reload


def test_a_reload_plan_removes_changes_adds_and_announces():
    ops, registry, announced = FakeOps(), Registry(), []
    old = config({"id": "stay"}, {"id": "drop"}, {"id": "edit"})
    for spec in old.agents:
        agent = AgentProcess(spec, ops, on_transition=lambda *a: None)
        registry.add(agent)
        agent.start(0.0)
    new = config({"id": "stay"}, {"id": "edit", "args": ["-v"]}, {"id": "add"})
    plan = plan_with_launch_changes(registry, old, new, old)
    assert (plan.added, plan.removed, [c.id for c in plan.changed], plan.unchanged) == (["add"], ["drop"], ["edit"], ["stay"])
    apply_plan(plan, new, registry, lambda spec: AgentProcess(spec, ops, on_transition=lambda *a: None), lambda a: announced.append(a.spec.id), 1.0)
    assert registry.get("drop").after_stop == "remove" and registry.get("add").state == S.STARTING
    assert registry.get("stay").spec is new.agents[0]
    assert announced == ["add", "edit"]


# ----------------------------------------------------------------------------- sd_notify


class NotifyOps:
    def __init__(self, member):
        self.member = member

    def is_member(self, handle, pid):
        return self.member

    def set_main_pid(self, agent_id, handle, pid):
        return None


def notify_world(member):
    registry, counters, actions = Registry(), Counter(), []
    agent = AgentProcess(make_spec(ready="notify"), FakeOps(), on_transition=lambda *a: None)
    registry.add(agent)
    agent.start(0.0)
    applier = NotifyApplier(registry, NotifyOps(member), counters, lambda agent_id: 1000, lambda a: None, lambda: actions.append(1), lambda: 1.0, lambda: 2.0)
    return applier, agent, counters, actions


def test_a_notify_from_a_process_of_the_agent_is_applied():
    applier, agent, counters, actions = notify_world(True)
    applier.apply("a1", Sender(pid=5, uid=1000, gid=1000), b"READY=1\nSTATUS=serving")
    assert agent.state == S.RUNNING and agent.notify_status == "serving" and actions == [1]


def test_a_notify_from_a_foreign_or_unknown_sender_is_dropped():
    applier, agent, counters, actions = notify_world(False)
    applier.apply("a1", Sender(pid=5, uid=1000, gid=1000), b"READY=1")
    applier.apply("a1", None, b"READY=1")
    applier.apply("ghost", Sender(pid=5, uid=1000, gid=1000), b"READY=1")
    assert agent.state == S.STARTING and actions == []
    assert counters == {"dropped_foreign_sender": 1, "dropped_no_credentials": 1, "dropped_not_running": 1}


def test_a_notify_from_an_exited_sender_is_judged_by_its_uid():
    applier, agent, counters, _ = notify_world(None)
    applier.apply("a1", Sender(pid=5, uid=1000, gid=1000), b"READY=1")
    assert agent.state == S.RUNNING and counters["unverified_exited_sender"] == 1


# ----------------------------------------------------------------------------- log upkeep


def test_a_rotation_round_rotates_only_logs_over_their_size(tmp_path):
    settings = make_spec().log.model_copy(update={"max_size": 10, "keep": 2, "compress": False})
    big, small = tmp_path / "big.log", tmp_path / "small.log"
    big.write_text("x" * 20)
    small.write_text("x")
    out = rotation_round([("big", big, settings, 0.0), ("small", small, settings, 0.0), ("none", tmp_path / "none.log", settings, 0.0)], by_age=False)
    assert [(agent_id, path) for agent_id, path, _ in out] == [("big", big)]


def test_a_log_truncated_for_space_is_an_event_of_its_agent(tmp_path):
    registry, events = Registry(), EventLog()
    registry.add(AgentProcess(make_spec(), FakeOps(), on_transition=lambda *a: None))
    upkeep = LogUpkeep(tmp_path, registry, events, lambda: None)
    upkeep.after_round([("a1", tmp_path / "a1.log", TRUNCATED_FOR_SPACE), ("a1", tmp_path / "a1.log", OSError("disk"))], 5.0)
    [event] = events.since(None, 10)
    assert event.agent_id == "a1" and "truncated in place" in event.reason


# ----------------------------------------------------------------------------- shutdown and control


def test_shutdown_is_decided_once_and_then_refuses_all_but_watching_verbs():
    woken = []
    shutdown = Shutdown(False, lambda: woken.append(1))
    assert not shutdown.refuses("stop")
    shutdown.request(True, "test")
    shutdown.request(False, "again")
    assert shutdown.stop_agents and shutdown.requested.is_set() and woken == [1]
    assert shutdown.refuses("stop") and not shutdown.refuses("status")


def sync_worker(**info) -> WorkerInfo:
    return WorkerInfo(name="sync", kind="sync", state="running", pid=1, uptime_s=1.0, restarts=0, restart_causes={}, last_exit=None,
                      last_exit_time=None, last_beat_age_s=0.1, counters={}, queue_depth=0, info=info)


def test_the_manager_has_heard_once_nothing_is_pending_since_the_stops():
    assert manager_heard(None, 100.0)
    assert manager_heard(sync_worker(connected="no"), 100.0)
    assert not manager_heard(sync_worker(connected="yes", pending="2", last_sync="2023-11-14T22:13:30Z"), 0.0)
    assert not manager_heard(sync_worker(connected="yes", pending="0", last_sync="2023-11-14T22:13:20Z"), 1_700_000_000.0)
    assert manager_heard(sync_worker(connected="yes", pending="0", last_sync="2023-11-14T22:13:30Z"), 1_700_000_000.0)


def test_agents_left_running_at_exit_are_let_go_with_every_record_saved():
    ops, forgotten, saved = FakeOps(), [], []
    running = AgentProcess(make_spec(id="run"), ops, on_transition=lambda *a: None)
    running.start(0.0)
    stopped = AgentProcess(make_spec(id="idle"), ops, on_transition=lambda *a: None)
    running.dirty = stopped.dirty = False
    let_go([running, stopped], forgotten.append, lambda: saved.extend(a.spec.id for a in (running, stopped) if a.dirty))
    assert forgotten == [running.handle] and saved == ["run", "idle"]


class PingContext:
    pid = 7

    def uptime(self) -> float:
        return 1.5

    def reload(self, dry_run: bool = False):
        raise ControlError(ErrorCode.FAILED, "agentd was started without a config file; nothing to reload")


def call(verb: str, args: dict | None = None, v: int = PROTOCOL_VERSION, shutdown: Shutdown | None = None):
    request = Request(v=v, id="r1", verb=verb, args=args or {})
    return asyncio.run(dispatch(request, PingContext(), shutdown or Shutdown(False, lambda: None)))


def test_dispatch_runs_the_verb_and_words_every_failure():
    assert call("ping").result == {"pong": True, "pid": 7, "uptime_s": 1.5}
    assert call("nope").error.code == ErrorCode.UNKNOWN_VERB
    assert call("ping", v=PROTOCOL_VERSION + 1).error.code == ErrorCode.UNSUPPORTED_VERSION
    assert call("ping", {"x": 1}).error.code == ErrorCode.BAD_REQUEST
    assert call("reload").error.message == "agentd was started without a config file; nothing to reload"
    assert call("status").error.code == ErrorCode.INTERNAL  # the context has no registry: a bug, said as one
    stopping = Shutdown(False, lambda: None)
    stopping.request(False, "test")
    assert call("reload", shutdown=stopping).error.code == ErrorCode.SHUTTING_DOWN


def test_agents_get_the_heartbeat_addresses_actually_bound():
    assert heartbeat_env("0.0.0.0:8080", None) == {"AGENTD_HEARTBEAT_URL": "http://127.0.0.1:8080/heartbeat"}
    assert heartbeat_env("[::1]:9", Path("/run/hb.sock")) == {"AGENTD_HEARTBEAT_URL": "http://[::1]:9/heartbeat", "AGENTD_HEARTBEAT_SOCKET": "/run/hb.sock"}
    assert heartbeat_env(None, None) == {}


def verb_context(registry: Registry, ops: FakeOps, t: list[float]) -> VerbContext:
    """A VerbContext of plain parts: what a handler sees, without a daemon."""
    woken: list[int] = []

    async def wait_for_agents(agents, settled, timeout):
        for agent in agents:  # the loop's ticks, by hand: every stopping tree is gone at once
            ops.alive.discard(agent.handle.generation)
            agent.on_exit(t[0], agent.handle.generation, None, 15)
            agent.tick(t[0])

    status = DaemonStatus(pid=7, version="test", uptime_s=1.0, config=None, run_dir="/run")
    return VerbContext(
        pid=7, config_path=None, registry=registry, events=EventLog(), history=None, signals=ops, pool=None, heartbeats=None, grace=None,
        stalls=None, now=lambda: t[0], uptime=lambda: 1.0, log_path=lambda agent_id: Path("/nonexistent") / agent_id, status_info=lambda: status,
        intake_counters=dict, feed_seq=lambda: 0, manager_address=lambda: None, stop_agents_on_shutdown=lambda: False,
        after_action=lambda: woken.append(1), records_written=lambda ids, timeout: True, wait_for_agents=wait_for_agents, reload=None, request_shutdown=None)


def test_verbs_act_through_the_context_alone():
    ops, registry, t = FakeOps(), Registry(), [0.0]
    for agent_id in ("a1", "a2"):
        agent = AgentProcess(make_spec(id=agent_id), ops, on_transition=lambda *a: None)
        registry.add(agent)
        agent.start(0.0)
        agent.tick(1.0)
    ctx = verb_context(registry, ops, t)
    t[0] = 2.0
    reply = asyncio.run(dispatch(Request(v=PROTOCOL_VERSION, id="r1", verb="stop", args={"ids": ["a1"]}), ctx, Shutdown(False, lambda: None)))
    assert reply.ok and reply.result["results"][0]["state"] == "stopped"
    reply = asyncio.run(dispatch(Request(v=PROTOCOL_VERSION, id="r2", verb="status", args={}), ctx, Shutdown(False, lambda: None)))
    assert [(a["id"], a["state"]) for a in reply.result["agents"]] == [("a1", "stopped"), ("a2", "running")]
    assert reply.result["manager"] is None and reply.result["daemon"]["pid"] == 7


def test_a_waiter_returns_once_every_agent_settled_or_at_its_timeout():
    async def scenario():
        changes = AgentChanges(asyncio.get_running_loop().time)
        a, b = AgentProcess(make_spec(id="a"), FakeOps(), on_transition=lambda *x: None), AgentProcess(make_spec(id="b"), FakeOps(), on_transition=lambda *x: None)
        settled = {"a": False, "b": False}
        waiter = asyncio.ensure_future(changes.wait_for([a, b], lambda agent: settled[agent.spec.id], 30.0))
        await asyncio.sleep(0)
        settled["a"] = True
        changes.fire()
        await asyncio.sleep(0)
        assert not waiter.done()  # b still works
        settled["b"] = True
        changes.fire()
        await asyncio.wait_for(waiter, 5.0)
        await asyncio.wait_for(changes.wait_for([a], lambda agent: False, 0.01), 5.0)  # the timeout ends it; nothing raises
    asyncio.run(scenario())
