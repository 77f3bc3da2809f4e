"""HealthJudge driven by hand with a fake clock: one test per rule, order, timer and bookkeeping case."""

from __future__ import annotations

import pytest

from supervisor.config.health_check import HealthCheck
from supervisor.wire.messages import AgentView, ResourceSample
from workers.health_judge import DEAD_RECHECK, HealthJudge, rules_of

MIB = 1024 * 1024
T0 = 1_700_000_000.0  # wall clock of the process start in every test


def view(agent_id: str = "a", *, state: str = "running", generation: int = 1, operator_stopped: bool = False, **hc) -> AgentView:
    settings = {"heartbeat_timeout": 90.0, "cpu_threshold": 50.0, "memory_threshold": 500 * MIB, "threshold_duration": 60.0, **hc}
    return AgentView(
        id=agent_id, type="custom", state=state, pid=1234, pgid=1234, create_time=T0, generation=generation,
        operator_stopped=operator_stopped, started_at=T0, started_mono=T0, health_check=HealthCheck(**settings).model_dump(mode="json"),
    )


def sample(ts: float, *, cpu: float | None = 1.0, rss: int = 10 * MIB, procs: int = 1, generation: int = 1, agent_id: str = "a") -> ResourceSample:
    return ResourceSample(agent_id=agent_id, ts=ts, cpu=cpu, rss=rss, procs=procs, generation=generation)


class Bench:
    """One agent, the judge, and the inputs a test changes between rounds."""

    def __init__(self, agent: AgentView | None = None) -> None:
        self.judge = HealthJudge(worker="health")
        self.agents = {"a": agent or view()}
        self.last_hb: dict[str, float] = {}
        self.samples: dict[str, ResourceSample] = {}
        self.endpoint: dict[str, bool | None] = {}
        self.intake: float | None = None

    def round(self, now: float, **kw):
        verdicts, report = self.judge.judge(now, self.agents, self.last_hb, self.samples, self.endpoint, self.intake, **kw)
        self.endpoint = {}  # a result counts once, as the worker hands them over
        return verdicts, report

    def beat(self, now: float) -> None:
        self.last_hb["a"] = now

    def health(self, now: float) -> tuple[str, str, list]:
        verdicts, report = self.round(now)
        return report["a"].health, report["a"].detail, verdicts


# ----------------------------------------------------------------------------- one test per rule


def test_healthy_with_fresh_heartbeat_and_low_use():
    b = Bench()
    b.beat(T0 + 5)
    b.samples["a"] = sample(T0 + 5)
    health, detail, verdicts = b.health(T0 + 10)
    assert (health, detail, verdicts) == ("healthy", "", [])


def test_dead_when_no_process_of_the_generation_is_left():
    b = Bench()
    b.beat(T0 + 5)
    b.samples["a"] = sample(T0 + 6, procs=0, cpu=None, rss=0)
    health, detail, [v] = b.health(T0 + 7)
    assert health == "dead" and (v.verdict, v.agent_id, v.generation, v.worker, v.time) == ("dead", "a", 1, "health", T0 + 7)
    assert "1234" in v.detail


def test_no_heartbeat_after_timeout():
    b = Bench()
    b.beat(T0 + 10)
    assert b.health(T0 + 100)[0] == "healthy"  # exactly at the deadline: not yet late
    health, detail, [v] = b.health(T0 + 105)
    assert health == "no_heartbeat" and v.detail == "no heartbeat for 95 s (timeout 90 s)"


def test_startup_grace_for_an_agent_that_never_heartbeats():
    b = Bench(view(state="starting", heartbeat_timeout=10.0, startup_grace=40.0))
    assert b.health(T0 + 39)[0] == "starting"  # past heartbeat_timeout, still within startup_grace
    health, detail, [v] = b.health(T0 + 41)
    assert health == "no_heartbeat" and v.detail == "no heartbeat since start 41 s ago (startup_grace 40 s)"


def test_startup_grace_defaults_to_max_of_timeout_and_30s():
    agent = view(heartbeat_timeout=10.0)
    agent.health_check["startup_grace"] = None  # as from a parent that left it unresolved
    assert rules_of(agent).startup_grace == 30.0
    b = Bench(agent)
    assert b.health(T0 + 29)[2] == []
    assert b.health(T0 + 31)[0] == "no_heartbeat"


def test_heartbeat_of_a_previous_process_does_not_count():
    b = Bench(view(startup_grace=90.0))
    b.beat(T0 - 1)  # before this process started: the old generation's
    assert b.health(T0 + 89)[0] == "healthy"
    assert "since start" in b.health(T0 + 91)[1]


def test_intake_restart_extends_the_deadline():
    b = Bench()
    b.beat(T0 + 10)
    b.intake = T0 + 80  # the intake was down; heartbeats in the outage were lost by us
    assert b.health(T0 + 150)[2] == []  # past last heartbeat + 90, before intake restart + 90
    assert b.health(T0 + 171)[0] == "no_heartbeat"


def test_intake_grace_also_covers_startup():
    b = Bench(view(startup_grace=30.0))
    b.intake = T0 + 20
    assert b.health(T0 + 100)[2] == []
    assert b.health(T0 + 111)[0] == "no_heartbeat"


def test_over_threshold_rss_for_threshold_duration():
    b = Bench(view(heartbeat_timeout=None))
    for t in range(0, 60, 10):
        b.samples["a"] = sample(T0 + t, rss=612 * MIB)
        assert b.health(T0 + t)[2] == []
    b.samples["a"] = sample(T0 + 60, rss=612 * MIB)
    health, detail, [v] = b.health(T0 + 60)
    assert health == "over_threshold" and v.detail == "rss 612 MiB > 500 MiB for 60 s"


def test_over_threshold_cpu_is_percent_of_one_core_summed_over_the_tree():
    b = Bench(view(heartbeat_timeout=None))
    for t in (0, 30, 60):
        b.samples["a"] = sample(T0 + t, cpu=87.0)
        verdicts = b.round(T0 + t)[0]
    assert [v.detail for v in verdicts] == ["cpu 87% > 50% for 60 s"]
    # Two busy cores read 200 %, over a 100 % threshold.
    b = Bench(view(heartbeat_timeout=None, cpu_threshold=100.0, threshold_duration=0.0))
    b.samples["a"] = sample(T0, cpu=200.0)
    assert b.health(T0)[0] == "over_threshold"


def test_cpu_threshold_above_100_allows_several_cores():
    b = Bench(view(heartbeat_timeout=None, cpu_threshold=250.0, threshold_duration=0.0))
    b.samples["a"] = sample(T0, cpu=200.0)
    assert b.health(T0)[0] == "healthy"
    b.samples["a"] = sample(T0 + 10, cpu=300.0)
    assert b.health(T0 + 10)[0] == "over_threshold"


def test_open_files_threshold_catches_an_fd_leak():
    b = Bench(view(heartbeat_timeout=None, open_files_threshold=1000, threshold_duration=30.0))
    for t, fds in ((0, 900), (10, 1200), (25, 1500)):
        b.samples["a"] = sample(T0 + t).model_copy(update={"fds": fds})
        assert b.health(T0 + t)[2] == []
    b.samples["a"] = sample(T0 + 40).model_copy(update={"fds": 2000})
    health, _detail, [v] = b.health(T0 + 40)
    assert health == "over_threshold" and v.detail == "open files 2000 > 1000 for 30 s"
    # Unset (the default), descriptors are not judged.
    b = Bench(view(heartbeat_timeout=None, threshold_duration=0.0))
    b.samples["a"] = sample(T0).model_copy(update={"fds": 100_000})
    assert b.health(T0)[0] == "healthy"


def test_spike_shorter_than_threshold_duration_is_not_reported():
    b = Bench(view(heartbeat_timeout=None))
    for t, rss in ((0, 600), (30, 600), (50, 600), (61, 10), (70, 600)):
        b.samples["a"] = sample(T0 + t, rss=rss * MIB)
        assert b.health(T0 + t)[2] == []


def test_healthy_sample_resets_the_timer():
    b = Bench(view(heartbeat_timeout=None))
    for t, rss in ((0, 600), (50, 600), (55, 10), (60, 600), (110, 600)):
        b.samples["a"] = sample(T0 + t, rss=rss * MIB)
        assert b.health(T0 + t)[2] == [], t
    b.samples["a"] = sample(T0 + 120, rss=600 * MIB)
    assert b.health(T0 + 120)[1].endswith("for 60 s")


def test_missing_cpu_neither_starts_nor_resets_the_timer():
    b = Bench(view(heartbeat_timeout=None))
    b.samples["a"] = sample(T0, cpu=None)  # first sample of the process: no rate yet
    assert b.health(T0)[2] == []
    b.samples["a"] = sample(T0 + 10, cpu=90.0)  # the timer starts here, not at T0
    b.round(T0 + 10)
    b.samples["a"] = sample(T0 + 40, cpu=None)  # e.g. the tree was replaced: unknown, not "below"
    assert b.health(T0 + 40)[2] == []
    b.samples["a"] = sample(T0 + 65, cpu=90.0)
    assert b.health(T0 + 65)[2] == []  # 55 s since T0 + 10
    b.samples["a"] = sample(T0 + 70, cpu=90.0)
    assert b.health(T0 + 70)[1] == "cpu 90% > 50% for 60 s"


def test_rss_over_with_unknown_cpu_starts_the_timer():
    b = Bench(view(heartbeat_timeout=None, threshold_duration=10.0))
    b.samples["a"] = sample(T0, cpu=None, rss=600 * MIB)
    b.round(T0)
    b.samples["a"] = sample(T0 + 10, cpu=None, rss=600 * MIB)
    assert b.health(T0 + 10)[0] == "over_threshold"


def test_endpoint_failed_after_consecutive_failures():
    b = Bench(view(heartbeat_timeout=None, http_endpoint="http://127.0.0.1:9100/metrics", endpoint_failures=3))
    for t, result in ((0, False), (30, False), (60, True), (90, False), (120, None), (150, False)):
        b.endpoint["a"] = result
        assert b.health(T0 + t)[2] == [], t
    b.endpoint["a"] = False
    health, detail, [v] = b.health(T0 + 180)
    assert health == "endpoint_failed" and v.detail.startswith("GET http://127.0.0.1:9100/metrics failed 3 times in a row")


def test_a_result_is_counted_once_however_often_judged():
    b = Bench(view(heartbeat_timeout=None, http_endpoint="http://127.0.0.1:9100/", endpoint_failures=2))
    b.endpoint["a"] = False
    b.round(T0)
    for t in range(1, 5):
        assert b.health(T0 + t)[0] == "healthy"  # no new result: the one failure is not counted again


# ----------------------------------------------------------------------------- order


def test_dead_wins_over_no_heartbeat():
    b = Bench()
    b.samples["a"] = sample(T0 + 200, procs=0)
    assert b.health(T0 + 200)[0] == "dead"


def test_no_heartbeat_wins_over_over_threshold():
    b = Bench(view(threshold_duration=0.0))
    b.samples["a"] = sample(T0 + 200, rss=900 * MIB)
    assert b.health(T0 + 200)[0] == "no_heartbeat"


def test_over_threshold_wins_over_endpoint_failed():
    b = Bench(view(heartbeat_timeout=None, threshold_duration=0.0, http_endpoint="http://127.0.0.1:1/", endpoint_failures=1))
    b.samples["a"] = sample(T0, rss=900 * MIB)
    b.endpoint["a"] = False
    assert b.health(T0)[0] == "over_threshold"


def test_endpoint_failed_when_nothing_else_is_wrong():
    b = Bench(view(threshold_duration=0.0, http_endpoint="http://127.0.0.1:1/", endpoint_failures=1))
    b.beat(T0 + 1)
    b.samples["a"] = sample(T0 + 1)
    b.endpoint["a"] = False
    assert b.health(T0 + 2)[0] == "endpoint_failed"


# ----------------------------------------------------------------------------- null disables


@pytest.mark.parametrize("timeout", [None, 0])
def test_null_or_zero_heartbeat_timeout_disables_the_heartbeat_rule(timeout):
    b = Bench(view(heartbeat_timeout=timeout))
    assert b.health(T0 + 100_000)[0] == "healthy"


def test_null_cpu_threshold_disables_cpu():
    b = Bench(view(heartbeat_timeout=None, cpu_threshold=None, threshold_duration=0.0))
    b.samples["a"] = sample(T0, cpu=400.0)
    assert b.health(T0)[0] == "healthy"


def test_null_memory_threshold_disables_rss():
    b = Bench(view(heartbeat_timeout=None, memory_threshold=None, threshold_duration=0.0))
    b.samples["a"] = sample(T0, rss=100_000 * MIB)
    assert b.health(T0)[0] == "healthy"


def test_no_endpoint_ignores_endpoint_results():
    b = Bench(view(heartbeat_timeout=None, endpoint_failures=1))
    b.endpoint["a"] = False
    assert b.health(T0)[0] == "healthy"


# ----------------------------------------------------------------------------- generations and bookkeeping


def test_verdict_once_per_generation():
    b = Bench()
    assert [v.verdict for v in b.round(T0 + 200)[0]] == ["no_heartbeat"]
    for t in (201, 300, 1000):
        verdicts, report = b.round(T0 + t)
        assert verdicts == [] and report["a"].health == "no_heartbeat"  # quiet, but status still says why


def test_new_generation_is_judged_afresh():
    b = Bench(view(heartbeat_timeout=None, threshold_duration=20.0, http_endpoint="http://x/", endpoint_failures=2))
    b.samples["a"] = sample(T0, rss=600 * MIB)
    b.endpoint["a"] = False
    b.round(T0)
    b.samples["a"] = sample(T0 + 20, rss=600 * MIB)
    assert b.health(T0 + 20)[0] == "over_threshold"
    # The parent restarted it: generation 2; neither the rss streak nor the endpoint failure carries over.
    b.agents["a"] = view(heartbeat_timeout=None, threshold_duration=20.0, http_endpoint="http://x/", endpoint_failures=2, generation=2)
    b.samples["a"] = sample(T0 + 25, rss=600 * MIB, generation=2)
    b.endpoint["a"] = False
    health, _, verdicts = b.health(T0 + 25)
    assert (health, verdicts) == ("healthy", [])
    b.samples["a"] = sample(T0 + 45, rss=600 * MIB, generation=2)
    (v,) = b.round(T0 + 45)[0]
    assert (v.verdict, v.generation) == ("over_threshold", 2)


def test_sample_of_another_generation_is_ignored():
    b = Bench(view(generation=3))
    b.beat(T0 + 1)
    b.samples["a"] = sample(T0 + 1, procs=0, generation=2)  # the old process is gone, of course
    assert b.health(T0 + 2)[0] == "healthy"


def test_operator_stopped_and_down_agents_are_not_judged():
    b = Bench()
    b.agents = {
        "op": view("op", state="running", operator_stopped=True),
        "stopping": view("stopping", state="stopping"),
        "failed": view("failed", state="failed"),
        "restarting": view("restarting", state="restarting"),
    }
    b.samples = {k: sample(T0, procs=0, agent_id=k) for k in b.agents}
    verdicts, report = b.round(T0 + 1000)
    assert verdicts == []
    assert {k: h.health for k, h in report.items()} == {"op": "operator_stopped", "stopping": "stopped", "failed": "stopped", "restarting": "stopped"}
    assert len(b.judge) == 0


def test_state_of_removed_or_stopped_agents_is_dropped():
    b = Bench()
    b.agents["b"] = view("b")
    b.round(T0)
    assert len(b.judge) == 2
    del b.agents["b"]
    b.agents["a"] = view(state="stopped")
    _, report = b.round(T0 + 1)
    assert len(b.judge) == 0 and set(report) == {"a"}


def test_due_limits_evaluation_and_others_keep_their_health():
    b = Bench()
    b.agents["b"] = view("b")
    b.beat(T0 + 1)
    _, report = b.round(T0 + 2)
    assert report["b"].health == "healthy"
    verdicts, report = b.round(T0 + 200, due={"a"})  # b is as late, but not due
    assert [v.agent_id for v in verdicts] == ["a"] and report["b"].health == "healthy"
    assert [v.agent_id for v in b.round(T0 + 201, due={"b"})[0]] == ["b"]


def test_observe_counts_samples_between_judgements():
    b = Bench(view(heartbeat_timeout=None, threshold_duration=30.0))
    b.samples["a"] = sample(T0, rss=600 * MIB)
    b.round(T0)
    b.judge.observe(T0 + 10, b.agents, {"a": sample(T0 + 10, rss=10 * MIB)})  # a dip the judge did not see
    b.samples["a"] = sample(T0 + 30, rss=600 * MIB)
    assert b.health(T0 + 30)[0] == "healthy"
    b.judge.observe(T0 + 45, b.agents, {"a": sample(T0 + 45, rss=600 * MIB)})
    b.samples["a"] = sample(T0 + 60, rss=600 * MIB)
    assert b.health(T0 + 60)[1] == "rss 600 MiB > 500 MiB for 30 s"


def test_rules_missing_keys_take_config_defaults():
    agent = AgentView(id="a", type="custom", state="running", health_check={"interval": 5})
    rules = rules_of(agent)
    assert (rules.interval, rules.heartbeat_timeout, rules.startup_grace, rules.memory_threshold, rules.endpoint_failures) == (5.0, 90.0, 90.0, 500 * MIB, 3)


# ----------------------------------------------------------------------------- agentd's own trouble (issue 10)


def test_verdict_carries_monotonic_evidence_window():
    b = Bench(view(heartbeat_timeout=10.0))
    b.beat(T0 + 5)
    (v,), _ = b.round(T0 + 16, wall=42.0)
    assert (v.verdict, v.since, v.formed, v.time) == ("no_heartbeat", T0 + 5, T0 + 16, 42.0)


def test_wall_clock_plays_no_part_in_deadlines():
    """Every input is monotonic; `wall` only stamps the verdict, so a wall step an hour ahead changes nothing."""
    b = Bench(view(heartbeat_timeout=10.0))
    b.beat(T0 + 5)
    verdicts, report = b.round(T0 + 8, wall=T0 + 8 + 3600)
    assert verdicts == [] and report["a"].health == "healthy"


def test_verdict_reopened_after_a_parent_stall_and_judged_on_fresh_evidence():
    b = Bench(view(heartbeat_timeout=10.0))
    b.beat(T0 + 5)
    (v,), _ = b.round(T0 + 30)  # formed while the parent was stalled: heartbeat times were frozen
    assert b.round(T0 + 31) == ([], b.round(T0 + 31)[1]) and b.judge.reopened == []  # once per generation
    # The parent refused it: it stalled from T0 + 6 to T0 + 31 and says so on the feed.
    b.intake = T0 + 31
    verdicts, report = b.round(T0 + 32, stalled_until=T0 + 31)
    assert b.judge.reopened == ["a"] and verdicts == [] and report["a"].health == "healthy"
    b.beat(T0 + 33)
    assert b.round(T0 + 40, stalled_until=T0 + 31)[0] == []
    # A real hang after the stall is still caught, once.
    (v2,), _ = b.round(T0 + 44, stalled_until=T0 + 31)
    assert v2.verdict == "no_heartbeat" and v2.since == T0 + 33


def test_no_heartbeat_verdict_reopened_when_a_heartbeat_arrives_after_its_evidence():
    b = Bench(view(heartbeat_timeout=10.0))
    b.beat(T0 + 5)
    (v,), _ = b.round(T0 + 16)
    b.beat(T0 + 15.5)  # the parent had it; our copy of the times was a moment behind
    verdicts, report = b.round(T0 + 17)
    assert b.judge.reopened == ["a"] and verdicts == [] and report["a"].health == "healthy"


def test_dead_verdict_of_a_generation_still_up_after_the_recheck_time_is_judged_again():
    """The parent refuses `dead` when its own watch says the process lives (a sample that missed it);
    the judge would otherwise stay quiet about that generation for good: no heartbeat checks either."""
    b = Bench()
    b.beat(T0 + 5)
    b.samples["a"] = sample(T0 + 6, procs=0, cpu=None, rss=0)
    (v,), _ = b.round(T0 + 7)
    assert v.verdict == "dead"
    b.samples["a"] = sample(T0 + 8)
    assert b.round(T0 + 7 + DEAD_RECHECK / 2)[0] == [] and b.judge.reopened == []  # the parent may still act on it
    b.beat(T0 + 10)
    verdicts, report = b.round(T0 + 7 + DEAD_RECHECK)
    assert b.judge.reopened == ["a"] and verdicts == [] and report["a"].health == "healthy"


def test_over_threshold_reopened_by_a_stall_rebuilds_its_evidence():
    b = Bench(view(heartbeat_timeout=None, threshold_duration=10.0))
    for t in range(0, 12, 2):
        b.judge.observe(T0 + t, b.agents, {"a": sample(T0 + t, rss=600 * MIB)})
    (v,), _ = b.round(T0 + 11)
    assert v.verdict == "over_threshold" and v.since == T0
    # An intake outage says nothing about memory: not reopened. A parent stall after the evidence is.
    b.intake = T0 + 12
    assert b.round(T0 + 12)[0] == [] and b.judge.reopened == []
    b.round(T0 + 13, stalled_until=T0 + 12.5)
    assert b.judge.reopened == ["a"]
    b.samples["a"] = sample(T0 + 14, rss=600 * MIB)
    assert b.round(T0 + 14, stalled_until=T0 + 12.5)[0] == []  # the streak starts again from the stall
