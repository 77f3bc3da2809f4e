"""Heartbeat batches, verdicts, the intake grace and the heartbeat feed, without processes.

Agents are real state machines (supervisor/parent/lifecycle.py) over tests/test_lifecycle.py's FakeOps;
the clock is a number the test moves, and the outputs (state feed, persistence) are lists.
"""

from __future__ import annotations

from collections import Counter

import pytest

from supervisor.common.stall_watch import StallWatch
from supervisor.parent.heartbeat_apply import HeartbeatApplier, VerdictApplier
from supervisor.parent.heartbeat_feed import HEARTBEAT_TIMES_RESEND, INTAKE_SILENCE, MAX_INTAKE_GRACE, HeartbeatFeed, IntakeGrace, intake_outage
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.registry import Registry
from supervisor.wire.verbs.workers import WorkerInfo
from supervisor.wire.messages import AgentHealth, HealthReport, Heartbeat, HeartbeatBatch, Verdict
from supervisor.wire.states import AgentState as S
from tests.unit.test_lifecycle import FakeOps, make_spec


class World:
    """A registry whose transitions are published like the daemon's (_on_transition -> state feed)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.ops = FakeOps()
        self.registry = Registry()
        self.published: list[tuple[str, str, str | None]] = []  # (agent, state, version) as announced
        self.persisted = 0
        self.accounted: list[tuple[str, int]] = []
        self.counters: Counter[str] = Counter()
        self.applier = HeartbeatApplier(self.registry, lambda: self.t, lambda: 1_700_000_000.0 + self.t, self.publish,
                                        self.persist, lambda w, n: self.accounted.append((w, n)), self.counters)

    def publish(self, agent: AgentProcess) -> None:
        self.published.append((agent.spec.id, agent.state.value, agent.reported.get("version")))

    def persist(self) -> None:
        self.persisted += 1

    def agent(self, agent_id: str = "a1", **spec) -> AgentProcess:
        a = AgentProcess(make_spec(id=agent_id, **spec), self.ops, on_transition=lambda agent, old, new, why: self.publish(agent))
        self.registry.add(a)
        a.start(self.t)
        a.dirty = False
        self.published.clear()
        return a

    def batch(self, *items: dict) -> HeartbeatBatch:
        return HeartbeatBatch(worker="heartbeat-unix", items=[Heartbeat(timestamp=1.0, **item) for item in items])


@pytest.fixture
def world():
    return World()


def test_a_first_heartbeat_with_a_new_version_publishes_one_state_update(world):
    """Regression: the transition to running and the version change each published the agent."""
    a = world.agent(health_check={"heartbeat_timeout": "90s"})
    world.applier.apply(world.batch({"agent_id": "a1", "version": "2.1"}))
    assert a.state == S.RUNNING
    assert world.published == [("a1", "running", "2.1")]
    assert world.persisted == 1  # the transition is written at once


def test_a_new_version_from_a_running_agent_is_published_and_not_written_at_once(world):
    a = world.agent(health_check={"heartbeat_timeout": "90s"})
    world.applier.apply(world.batch({"agent_id": "a1", "version": "2.1"}))
    world.published.clear()
    a.dirty = False
    world.applier.apply(world.batch({"agent_id": "a1", "version": "2.2"}, {"agent_id": "a1", "version": "2.2"}))
    assert world.published == [("a1", "running", "2.2")]
    assert world.persisted == 1 and a.hb_dirty  # heartbeat-only changes wait for the flush


def test_heartbeats_for_unknown_stopped_or_replaced_agents_are_counted_and_dropped(world):
    a = world.agent(health_check={"heartbeat_timeout": "90s"})
    world.agent("down").stop(world.t)
    world.applier.apply(world.batch({"agent_id": "ghost"}, {"agent_id": "down"}, {"agent_id": "a1", "generation": a.generation + 1}))
    assert a.state == S.STARTING and a.last_heartbeat_mono is None
    assert world.counters == {"dropped_unknown_agent": 1, "dropped_not_running": 1, "dropped_stale_generation": 1}
    assert world.accounted == [("heartbeat-unix", 3)]  # the worker's forwarding is credited with all it sent


def test_heartbeat_times_are_receipt_times(world):
    world.agent(health_check={"heartbeat_timeout": "90s"})
    world.agent("silent")
    world.t = 150.0
    world.applier.apply(world.batch({"agent_id": "a1"}))
    assert world.applier.times_mono() == {"a1": 150.0}
    assert world.applier.times() == {"a1": 1_700_000_150.0}


# ----------------------------------------------------------------------------- verdicts


def verdicts(world, stalls=None):
    actions = []
    applier = VerdictApplier(world.registry, stalls or StallWatch(clock=lambda: world.t), lambda: world.t, lambda: actions.append(1), world.counters)
    return applier, actions


def test_a_verdict_on_the_current_process_restarts_it(world):
    a = world.agent()
    a.tick(world.t + 5)
    applier, actions = verdicts(world)
    # Not `dead`: the fake process lives, and a `dead` verdict about a live process is refused (test_lifecycle.py).
    applier.apply(Verdict(worker="health", agent_id="a1", generation=a.generation, verdict="over_threshold", detail="rss 600 MiB > 500 MiB for 60 s", time=0.0))
    assert a.state == S.STOPPING and actions == [1]


def test_a_no_heartbeat_verdict_is_refused_after_a_newer_heartbeat(world):
    a = world.agent(health_check={"heartbeat_timeout": "90s"})
    world.applier.apply(world.batch({"agent_id": "a1"}))
    applier, actions = verdicts(world)
    applier.apply(Verdict(worker="health", agent_id="a1", generation=a.generation, verdict="no_heartbeat", detail="silent", time=0.0, since=world.t - 1))
    assert a.state == S.RUNNING and actions == [] and world.counters["verdicts_refused"] == 1


def test_a_verdict_whose_evidence_spans_our_own_stall_is_refused(world):
    a = world.agent()
    a.tick(world.t + 5)
    stalls = StallWatch(clock=lambda: world.t)
    world.t += 10  # the loop did not run for 10 s
    stalls.observe()
    applier, actions = verdicts(world, stalls)
    assert "agentd itself was stalled" in applier.refusal(a, Verdict(worker="health", agent_id="a1", generation=a.generation, verdict="dead", detail="", time=0.0, since=world.t - 20))
    assert applier.refusal(a, Verdict(worker="health", agent_id="a1", generation=a.generation, verdict="dead", detail="", time=0.0)) is None


def test_a_health_report_records_the_health_of_each_current_process_and_acts_on_none(world):
    a = world.agent()
    a.tick(world.t + 5)
    applier, actions = verdicts(world)
    applier.report(HealthReport(worker="health", agents={
        "a1": AgentHealth(health="healthy", generation=a.generation, detail="ok"),
        "gone": AgentHealth(health="dead", generation=1)}))
    assert (a.health, a.health_detail, a.state) == ("healthy", "ok", S.RUNNING) and actions == []
    applier.report(HealthReport(worker="health", agents={"a1": AgentHealth(health="dead", generation=a.generation - 1)}))
    assert a.health == "healthy"  # about an older generation: not this process's health


# ----------------------------------------------------------------------------- intake grace and the feed


def worker(name: str, state: str = "running", beat_age: float | None = 0.5, beat_every: float | None = 1.0) -> WorkerInfo:
    return WorkerInfo(name=name, kind=name.split("-")[0], state=state, pid=1, uptime_s=1.0, restarts=0, restart_causes={},
                      last_exit=None, last_exit_time=None, last_beat_age_s=beat_age, beat_every_s=beat_every, counters={}, queue_depth=0, info={})


def test_an_intake_outage_is_a_heartbeat_worker_down_silent_or_not_forwarding():
    assert not intake_outage([worker("heartbeat-unix"), worker("health", "restarting")], lambda name: False)
    assert intake_outage([worker("heartbeat-unix", "restarting")], lambda name: False)
    assert intake_outage([worker("heartbeat-http-0", beat_age=None)], lambda name: False)
    assert intake_outage([worker("heartbeat-http-0", beat_age=4.0)], lambda name: False)
    assert intake_outage([worker("heartbeat-unix")], lambda name: name == "heartbeat-unix")


def test_an_intake_that_announced_a_longer_pause_is_out_only_that_much_later():
    # Beating every second (some agent expects heartbeats): out after INTAKE_SILENCE, as always.
    assert intake_outage([worker("heartbeat-unix", beat_age=INTAKE_SILENCE + 0.1)], lambda name: False)
    # Beating every 3 s (nobody's deadline depends on it): a beat 3.5 s ago is on time, 5.5 s ago is not.
    assert not intake_outage([worker("heartbeat-unix", beat_age=3.5, beat_every=3.0)], lambda name: False)
    assert intake_outage([worker("heartbeat-unix", beat_age=INTAKE_SILENCE + 2.1, beat_every=3.0)], lambda name: False)


def test_the_grace_rolls_during_an_outage_until_it_is_too_long():
    grace = IntakeGrace(0.0, 1000.0)
    grace.observe(True, 10.0, 1010.0)
    assert (grace.restarted_mono, grace.restarted_wall) == (10.0, 1010.0)
    grace.observe(True, 10.0 + MAX_INTAKE_GRACE, 0.0)
    assert grace.restarted_mono == 10.0 + MAX_INTAKE_GRACE
    grace.observe(True, 11.0 + MAX_INTAKE_GRACE, 0.0)  # broken too long: deadlines apply again
    assert grace.restarted_mono == 10.0 + MAX_INTAKE_GRACE
    grace.observe(False, 400.0, 0.0)
    grace.observe(True, 401.0, 0.0)  # a new outage gets its grace again
    assert grace.restarted_mono == 401.0


def test_the_grace_restarts_after_an_intake_respawn_and_after_our_own_stall():
    grace = IntakeGrace(0.0, 1000.0)
    grace.on_worker_respawn("health", 5.0, 1005.0)
    assert grace.restarted_mono == 0.0
    grace.on_worker_respawn("heartbeat-unix", 5.0, 1005.0)
    assert grace.restarted_mono == 5.0
    grace.after_stall(3.0, 1006.0)  # a stall that ended before the respawn does not move deadlines back
    assert (grace.restarted_mono, grace.restarted_wall) == (5.0, 1006.0)


def test_the_feed_publishes_changes_resends_now_and_then_and_flushes_on_its_interval():
    t = [0.0]
    sent, flushed = [], []
    times = ({"a1": 1.0}, {"a1": 0.5})
    feed = HeartbeatFeed(IntakeGrace(0.0, 1000.0), lambda: times, lambda: None, lambda: False,
                         lambda *msg: sent.append(msg), lambda: flushed.append(t[0]), 5.0, lambda: t[0], lambda: 1000.0 + t[0])
    for second in range(1, 8):
        t[0] = float(second)
        feed.step()
    assert sent == [({"a1": 1.0}, 1000.0, {"a1": 0.5}, 0.0, None)]  # once: nothing changed since
    assert flushed == [5.0]
    times = ({"a1": 8.0}, {"a1": 7.5})
    t[0] = 8.0
    feed.step()
    assert len(sent) == 2
    t[0] = 8.0 + HEARTBEAT_TIMES_RESEND
    feed.step()
    assert len(sent) == 3 and sent[2] == sent[1]
