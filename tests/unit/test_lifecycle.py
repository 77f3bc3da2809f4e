"""The agent state machine, one test per transition, driven by a fake clock and fake process ops.

No real processes and no sleeps: time is a number the test moves, and `FakeOps` stands in for the
OS (spawn, signal, is-the-tree-alive), recording what the machine asked of it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from supervisor.config.loading import parse_config
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.process_handle import ProcessHandle, SpawnError
from supervisor.common.metadata_store import AgentRecord
from supervisor.wire.states import AgentState as S


def make_spec(**overrides):
    agent = {"id": "a1", "binary_path": "/bin/true", "start_seconds": 1, "stop_timeout": 30,
             "health_check": {"heartbeat_timeout": None},
             # min_interval 0: these tests are about backoff steps; the restart floor has its own tests below
             "restart": {"backoff_steps": [0, 10, 30], "max_retries": 3, "reset_after": 300, "min_interval": 0}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(agent.get(key), dict):
            agent[key] = {**agent[key], **value}
        else:
            agent[key] = value
    return parse_config({"agents": [agent]}, source="test.yaml", base_dir=Path("/")).agents[0]


class FakeOps:
    """Records spawns and signals; `alive` holds the generations whose tree still has processes."""

    def __init__(self) -> None:
        self.next_pid = 1000
        self.spawned: list[ProcessHandle] = []
        self.signals: list[tuple[int, int]] = []
        self.alive: set[int] = set()
        self.fail_spawn: str | None = None
        # generation -> delivers an exit that has happened but that the loop has not handled yet
        self.unhandled_exits: dict[int, object] = {}

    def spawn(self, spec, generation, now):
        if self.fail_spawn:
            raise SpawnError(self.fail_spawn)
        self.next_pid += 1
        h = ProcessHandle(pid=self.next_pid, pgid=self.next_pid, create_time=1.0, generation=generation, started_mono=now, started_wall=0.0)
        self.spawned.append(h)
        self.alive.add(generation)
        return h

    def signal_tree(self, handle, signum):
        self.signals.append((handle.pid, signum))

    def tree_alive(self, handle):
        return handle.generation in self.alive

    def collect_exit(self, handle):
        deliver = self.unhandled_exits.pop(handle.generation, None)
        if deliver is not None:
            deliver()


@pytest.fixture
def ops():
    return FakeOps()


def new_agent(ops, transitions=None, record=None, **spec):
    def on_transition(agent, old, new, reason):
        if transitions is not None:
            transitions.append((old, new, reason))
    return AgentProcess(make_spec(**spec), ops, on_transition=on_transition, record=record, wall=lambda: 1_700_000_000.0)


def running_agent(ops):
    """An agent started at 0.0 and running from 1.0 (past start_seconds)."""
    a = new_agent(ops)
    a.start(0.0)
    a.tick(1.0)
    return a


def crash(agent, ops, now, code=1):
    """The current process exits and its whole tree is gone."""
    ops.alive.discard(agent.handle.generation)
    agent.on_exit(now, agent.handle.generation, code, None)


def settle_stop(agent, ops, now, code=None, sig=signal.SIGTERM):
    ops.alive.discard(agent.handle.generation)
    agent.on_exit(now, agent.handle.generation, code, sig)
    return agent.tick(now)


# ----------------------------------------------------------------------------- start


def test_start_goes_starting_then_running_after_start_seconds(ops):
    t = []
    a = new_agent(ops, t)
    assert a.start(0.0).ok
    assert a.state == S.STARTING and len(ops.spawned) == 1
    assert a.tick(0.5) == pytest.approx(1.0)  # asks to be woken when start_seconds is up
    assert a.state == S.STARTING
    a.tick(1.0)
    assert a.state == S.RUNNING
    assert [(o, n) for o, n, _ in t] == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]


def test_exit_waiting_behind_the_start_timer_is_taken_first(ops):
    """Regression: on a busy loop the start_seconds timer ran before the queued exit of a process that
    had already crashed, so an agent that died during start was reported running (and `start` said ok)."""
    t = []
    a = new_agent(ops, t)
    a.start(0.0)
    gen = a.handle.generation
    ops.alive.discard(gen)
    ops.unhandled_exits[gen] = lambda: a.on_exit(0.4, gen, 2, None)
    a.tick(1.0)
    assert a.state == S.RESTARTING
    assert S.RUNNING not in [n for _, n, _ in t]


def test_dead_verdict_racing_a_clean_exit_leaves_an_on_failure_agent_stopped(ops):
    """Regression: a `dead` verdict that arrived before the loop had read the exit of a process that ended
    with code 0 forced a restart, although policy on-failure says a clean exit stays stopped."""
    a = new_agent(ops, restart={"policy": "on-failure"})
    a.start(0.0)
    a.tick(1.0)
    gen = a.handle.generation
    ops.alive.discard(gen)
    ops.unhandled_exits[gen] = lambda: a.on_exit(5.0, gen, 0, None)
    res = a.verdict(5.1, gen, "dead: process is gone")
    assert not res.ok
    assert a.state == S.STOPPED and a.restart_count == 0 and len(ops.spawned) == 1


def test_dead_verdict_about_a_process_agentds_own_watch_says_lives_is_refused(ops):
    """Regression (stressed run): a sample that missed the live process (not yet in its cgroup) made a
    `dead` verdict, and a healthy agent was restarted for it; the parent is the authority on liveness."""
    a = new_agent(ops)
    a.start(0.0)
    a.tick(1.0)
    gen, pid = a.handle.generation, a.handle.pid
    res = a.verdict(5.0, gen, f"dead: process {pid} is gone")
    assert not res.ok and "alive" in res.message
    assert a.state == S.RUNNING and a.handle.pid == pid and a.restart_count == 0 and ops.signals == []
    ops.alive.discard(gen)  # now really gone (an adopted process with no exit watch): acted on
    assert a.verdict(6.0, gen, f"dead: process {pid} is gone").ok


def test_agent_expecting_heartbeats_stays_starting_until_first_heartbeat(ops):
    a = new_agent(ops, health_check={"heartbeat_timeout": "90s"})
    a.start(0.0)
    assert a.tick(500.0) is None and a.state == S.STARTING
    a.on_heartbeat(501.0, 1_700_000_501.0, {"version": "2.1"})
    assert a.state == S.RUNNING and a.reported["version"] == "2.1"


def test_start_of_running_agent_is_a_noop(ops):
    a = new_agent(ops)
    a.start(0.0)
    res = a.start(0.1)
    assert res.ok and "already" in res.message and len(ops.spawned) == 1


def test_spawn_error_is_retried_with_backoff_and_fails_only_after_max_retries(ops):
    # A binary missing for a while (an upgrade, a late mount): retried as the original daemon did.
    ops.fail_spawn = "binary_path /nope does not exist"
    a = new_agent(ops, restart={"backoff_steps": [0, 10, 30], "max_retries": 3})
    res = a.start(0.0)
    assert not res.ok and "does not exist" in res.message
    assert a.state == S.RESTARTING and a.backoff_until == 0.0 and a.restart_count == 1
    a.tick(0.0)  # step 0: at once; fails again
    assert a.state == S.RESTARTING and a.backoff_until == pytest.approx(10.0)
    a.tick(9.9)
    assert a.restart_count == 2
    a.tick(10.0)
    assert a.state == S.RESTARTING and a.backoff_until == pytest.approx(40.0)
    a.tick(40.0)
    assert a.state == S.FAILED and "does not exist" in a.reason and "gave up after 3 restarts" in a.reason
    assert a.restarts_by_kind == {"spawn": 3}


def test_spawn_retry_succeeds_once_the_binary_is_back(ops):
    ops.fail_spawn = "binary_path /opt/a does not exist"
    a = new_agent(ops)
    a.start(0.0)
    ops.fail_spawn = None
    a.tick(0.0)
    assert a.state == S.STARTING and len(ops.spawned) == 1


def test_spawn_error_with_policy_never_fails_at_once(ops):
    ops.fail_spawn = "exec of /opt/a failed: Permission denied"
    a = new_agent(ops, restart={"policy": "never"})
    assert not a.start(0.0).ok
    assert a.state == S.FAILED and "Permission denied" in a.reason


def test_ready_notify_waits_startup_grace_for_ready(ops):
    a = new_agent(ops, ready="notify", health_check={"startup_grace": 5})
    a.start(0.0)
    assert a.tick(1.0) == pytest.approx(5.0)  # READY=1 is due by startup_grace
    assert a.state == S.STARTING
    a.tick(5.0)
    assert a.state == S.STOPPING and a.reason.startswith("not_ready: no READY=1 within 5s")


def test_ready_notify_with_startup_grace_zero_allows_no_time(ops):
    """Regression: `startup_grace or 30.0` made an explicit `startup_grace: 0` mean 30 s."""
    a = new_agent(ops, ready="notify", health_check={"startup_grace": 0})
    assert a.spec.health_check.startup_grace == 0
    a.start(0.0)
    a.tick(0.0)
    assert a.state == S.STOPPING and a.reason.startswith("not_ready: no READY=1 within 0s")


# ----------------------------------------------------------------------------- crash and backoff


def test_crash_restarts_after_each_backoff_step_last_step_repeats(ops):
    a = new_agent(ops, restart={"max_retries": 0})
    a.start(0.0)
    a.tick(1.0)
    now = 1.0
    for expected_delay in [0, 10, 30, 30]:
        crash(a, ops, now)
        assert a.state == S.RESTARTING
        assert a.backoff_until == pytest.approx(now + expected_delay)
        if expected_delay:
            a.tick(now + expected_delay - 0.01)
            assert a.state == S.RESTARTING
        a.tick(now + expected_delay)
        assert a.state == S.STARTING
        now += expected_delay + 0.5
    assert len(ops.spawned) == 5 and a.total_restarts == 4


def test_gives_up_after_max_retries_and_operator_start_revives(ops):
    t = []
    a = new_agent(ops, t, restart={"backoff_steps": [0], "max_retries": 3})
    a.start(0.0)
    now = 0.0
    for _ in range(3):
        crash(a, ops, now, code=2)
        now = a.backoff_until  # zero backoff: respawn as soon as the restart floor allows
        a.tick(now)
        now += 0.1
    crash(a, ops, now, code=2)
    assert a.state == S.FAILED
    assert "gave up after 3 restarts" in a.reason
    assert a.tick(now + 1000) is None and a.state == S.FAILED  # nothing automatic revives it
    res = a.start(now + 1000)
    assert res.ok and a.state == S.STARTING and a.restart_count == 0


def test_restart_count_resets_after_healthy_running(ops):
    a = new_agent(ops)
    a.start(0.0)
    crash(a, ops, 0.5)
    a.tick(0.5)
    assert a.restart_count == 1
    a.tick(1.5)
    assert a.state == S.RUNNING
    assert a.tick(100.0) == pytest.approx(300.5)  # reset_after counts from this process's start
    a.tick(300.5)
    assert a.restart_count == 0 and a.dirty


def test_policy_never_stays_stopped_after_exit(ops):
    a = new_agent(ops, restart={"policy": "never"})
    a.start(0.0)
    crash(a, ops, 5.0)
    assert a.state == S.STOPPED and "never" in a.reason


def test_policy_on_failure_restarts_only_failures(ops):
    a = new_agent(ops, restart={"policy": "on-failure"})
    a.start(0.0)
    crash(a, ops, 5.0, code=0)
    assert a.state == S.STOPPED
    a.start(6.0)
    crash(a, ops, 7.0, code=1)
    assert a.state == S.RESTARTING


def test_exit_with_leftover_children_stops_them_before_restarting(ops):
    a = running_agent(ops)
    gen = a.handle.generation
    a.on_exit(2.0, gen, 1, None)  # main died, its children did not (still in ops.alive)
    assert a.state == S.STOPPING
    assert ops.signals[-1] == (a.handle.pid, signal.SIGTERM)
    ops.alive.discard(gen)
    a.tick(2.5)
    assert a.state == S.RESTARTING and a.restart_count == 1


def test_stale_exit_of_an_old_generation_is_ignored(ops):
    a = new_agent(ops)
    a.start(0.0)
    old = a.handle.generation
    crash(a, ops, 1.0)
    a.tick(1.0)
    assert a.state == S.STARTING and a.handle.generation == old + 1
    a.on_exit(1.1, old, 1, None)  # a late notification about the previous process
    assert a.state == S.STARTING and a.restart_count == 1


# ----------------------------------------------------------------------------- stop


def test_stop_sends_stop_signal_then_kill_after_stop_timeout(ops):
    a = new_agent(ops, stop_timeout=30)
    a.start(0.0)
    a.tick(1.0)
    a.stop(2.0)
    assert a.state == S.STOPPING and a.operator_stopped
    assert ops.signals == [(a.handle.pid, signal.SIGTERM)]
    a.tick(31.9)
    assert len(ops.signals) == 1
    a.tick(32.0)
    assert ops.signals[-1] == (a.handle.pid, signal.SIGKILL)
    settle_stop(a, ops, 32.1, sig=signal.SIGKILL)
    assert a.state == S.STOPPED
    assert a.last_exit.signal == "SIGKILL"


def test_stop_force_sends_sigkill_at_once(ops):
    a = new_agent(ops, stop_timeout=30)
    a.start(0.0)
    a.tick(1.0)
    assert a.stop(2.0, force=True).ok
    assert ops.signals == [(a.handle.pid, signal.SIGKILL)] and a.kill_sent_at == 2.0
    a.tick(40.0)
    assert len(ops.signals) == 1  # no second SIGKILL from the stop_timeout
    settle_stop(a, ops, 40.1, sig=signal.SIGKILL)
    assert a.state == S.STOPPED and "SIGKILL" in a.reason


def test_stop_force_on_a_tree_already_stopping_kills_it(ops):
    a = new_agent(ops, stop_timeout=30)
    a.start(0.0)
    a.tick(1.0)
    a.stop(2.0)
    assert a.stop(3.0, force=True).message == "already stopping; sent SIGKILL"
    assert ops.signals == [(a.handle.pid, signal.SIGTERM), (a.handle.pid, signal.SIGKILL)]


def test_stop_is_not_done_while_any_process_of_the_tree_lives(ops):
    a = running_agent(ops)
    a.stop(2.0)
    a.on_exit(2.1, a.handle.generation, None, signal.SIGTERM)  # main gone, tree still alive
    a.tick(2.2)
    assert a.state == S.STOPPING
    ops.alive.discard(a.handle.generation)
    a.tick(2.3)
    assert a.state == S.STOPPED


def test_custom_stop_signal_is_used(ops):
    a = new_agent(ops, stop_signal="INT")
    a.start(0.0)
    a.stop(1.0)
    assert ops.signals == [(a.handle.pid, signal.SIGINT)]


def test_stop_during_backoff_cancels_the_restart(ops):
    a = new_agent(ops)
    a.start(0.0)
    crash(a, ops, 1.0)  # first step is 0 s
    a.tick(1.0)
    crash(a, ops, 1.5)  # second step is 10 s
    assert a.state == S.RESTARTING and a.backoff_until == pytest.approx(11.5)
    a.stop(2.0)
    assert a.state == S.STOPPED
    a.tick(1000.0)
    assert a.state == S.STOPPED and len(ops.spawned) == 2


def test_stop_of_stopped_agent_is_clear_and_harmless(ops):
    a = new_agent(ops)
    res = a.stop(0.0)
    assert res.ok and res.message == "already stopped" and ops.signals == []


def test_stop_of_failed_agent_moves_it_to_stopped(ops):
    ops.fail_spawn = "nope"
    a = new_agent(ops)
    a.start(0.0)
    a.stop(1.0)
    assert a.state == S.STOPPED and a.operator_stopped


# ----------------------------------------------------------------------------- operator intent


def test_operator_stopped_agent_is_never_started_by_automation(ops):
    a = running_agent(ops)
    a.stop(2.0)
    settle_stop(a, ops, 2.1)
    assert a.state == S.STOPPED
    assert a.start_if_wanted(3.0, "agentd start") is None
    assert not a.verdict(3.0, a.handle.generation, "no_heartbeat").ok
    a.update_spec(make_spec(args=["--new"]), 4.0)
    assert a.tick(5000.0) is None
    assert a.state == S.STOPPED and len(ops.spawned) == 1


def test_operator_stop_during_a_restart_wins(ops):
    a = running_agent(ops)
    a.restart(2.0)
    a.stop(2.1)
    settle_stop(a, ops, 2.2)
    assert a.state == S.STOPPED and len(ops.spawned) == 1


def test_verdict_stops_then_restarts_under_policy(ops):
    a = running_agent(ops)
    res = a.verdict(5.0, a.handle.generation, "no_heartbeat for 95s")
    assert res.ok and a.state == S.STOPPING
    settle_stop(a, ops, 5.1)
    assert a.state == S.RESTARTING and "no_heartbeat" in a.last_restart_reason


def test_stale_verdict_is_ignored(ops):
    a = new_agent(ops)
    a.start(0.0)
    old = a.handle.generation
    crash(a, ops, 1.0)
    a.tick(1.0)
    assert not a.verdict(2.0, old, "dead").ok
    assert a.state == S.STARTING


# ----------------------------------------------------------------------------- restart, reload, remove


def test_restart_stops_the_tree_then_starts_a_new_generation(ops):
    a = running_agent(ops)
    first = a.handle
    a.restart(2.0)
    assert a.state == S.STOPPING
    settle_stop(a, ops, 2.1)
    assert a.state == S.STARTING and a.handle.generation == first.generation + 1
    assert a.total_restarts == 1 and a.restart_count == 0


def test_start_while_stopping_starts_once_the_tree_is_gone(ops):
    a = new_agent(ops)
    a.start(0.0)
    a.stop(1.0)
    assert a.start(1.1).ok and not a.operator_stopped
    settle_stop(a, ops, 1.2)
    assert a.state == S.STARTING and len(ops.spawned) == 2


def test_update_spec_restarts_a_running_agent_with_the_new_spec(ops):
    a = running_agent(ops)
    a.update_spec(make_spec(args=["--v2"]), 2.0)
    assert a.state == S.STOPPING
    settle_stop(a, ops, 2.1)
    assert a.state == S.STARTING and a.spec.args == ["--v2"]


def test_disabling_by_reload_stops_but_is_not_an_operator_stop(ops):
    a = new_agent(ops)
    a.start(0.0)
    a.update_spec(make_spec(enabled=False), 1.0)
    settle_stop(a, ops, 1.1)
    assert a.state == S.STOPPED and not a.operator_stopped
    a.update_spec(make_spec(enabled=True), 2.0)
    assert a.state == S.STARTING


def test_remove_stops_then_marks_removed(ops):
    a = new_agent(ops)
    a.start(0.0)
    a.remove(1.0)
    assert a.state == S.STOPPING and not a.removed
    settle_stop(a, ops, 1.1)
    assert a.removed and a.state == S.STOPPED


# ----------------------------------------------------------------------------- persistence and adoption


def test_record_round_trip_keeps_counts_and_operator_stop(ops):
    a = new_agent(ops)
    a.start(0.0)
    crash(a, ops, 0.5)
    a.tick(0.5)
    a.stop(1.0)
    rec = a.to_record()
    assert rec.restart_count == 1 and rec.total_restarts == 1 and rec.operator_stopped
    b = new_agent(FakeOps(), record=AgentRecord.model_validate(rec.model_dump()))
    assert b.restart_count == 1 and b.operator_stopped and b.state == S.STOPPED


def test_adopted_agent_runs_and_its_unknown_exit_restarts_it(ops):
    a = new_agent(ops)
    h = ProcessHandle(pid=4242, pgid=4242, create_time=5.0, generation=1, started_mono=-10.0, started_wall=0.0, adopted=True)
    a.adopt(h, 0.0, "running")
    assert a.state == S.RUNNING and a.handle.pid == 4242
    ops.alive.discard(1)
    a.on_exit(1.0, 1, None, None)
    assert a.state == S.RESTARTING and a.last_exit.code is None
    a.tick(1.0)
    assert a.state == S.STARTING and a.handle.generation == 2


def test_adopting_an_operator_stopped_agent_resumes_the_stop(ops):
    rec = AgentRecord(id="a1", status="stopping", pid=4242, operator_stopped=True)
    a = new_agent(ops, record=rec)
    h = ProcessHandle(pid=4242, pgid=4242, create_time=5.0, generation=1, started_mono=0.0, started_wall=0.0, adopted=True)
    ops.alive.add(1)
    a.adopt(h, 0.0, "stopping")
    assert a.state == S.STOPPING and ops.signals == [(4242, signal.SIGTERM)]


# ----------------------------------------------------------------------------- health


def test_verdict_with_policy_never_records_health_but_does_not_stop(ops):
    a = new_agent(ops, restart={"policy": "never"})
    a.start(0.0)
    a.tick(1.0)
    res = a.verdict(2.0, a.handle.generation, "over_threshold: rss 600 MiB > 500 MiB for 60 s")
    assert not res.ok and a.state == S.RUNNING
    assert a.health == "over_threshold" and ops.signals == []


def test_restarts_are_counted_by_reason(ops):
    a = running_agent(ops)
    crash(a, ops, 2.0)
    a.tick(2.0)
    a.tick(3.1)
    a.verdict(4.0, a.handle.generation, "no_heartbeat: no heartbeat for 95 s")
    settle_stop(a, ops, 4.1)
    a.tick(20.0)
    a.tick(21.1)
    a.restart(22.0)
    settle_stop(a, ops, 22.1)
    assert a.restarts_by_kind == {"exit": 1, "no_heartbeat": 1, "operator": 1}
    assert a.total_restarts == 3


def test_health_reports_for_old_generations_are_ignored_and_stop_says_why(ops):
    a = running_agent(ops)
    gen = a.handle.generation
    a.set_health(gen, "healthy", "")
    assert a.health == "healthy"
    a.set_health(gen - 1, "over_threshold", "old news")
    assert a.health == "healthy"
    a.set_health(gen, "starting", "")
    assert a.health is None  # "not judged yet" is shown as nothing, not as a state echo
    a.stop(2.0)
    settle_stop(a, ops, 2.1)
    assert a.health == "operator_stopped"


# ----------------------------------------------------------------------------- the restart floor (issue 10, break 11)


def test_zero_backoff_is_floored_at_min_interval_since_the_last_start(ops):
    a = new_agent(ops, restart={"backoff_steps": [0], "max_retries": 0, "min_interval": 2})
    a.start(0.0)
    crash(a, ops, 0.5)  # dies half a second after its start
    assert a.state == S.RESTARTING and a.backoff_until == 2.0
    assert a.tick(1.9) == 2.0 and len(ops.spawned) == 1
    a.tick(2.0)
    assert a.state == S.STARTING and len(ops.spawned) == 2
    crash(a, ops, 10.0)  # ran longer than the floor: the backoff step alone decides
    assert a.backoff_until == 10.0


def test_min_interval_zero_still_has_a_hard_floor(ops):
    a = new_agent(ops, restart={"backoff_steps": [0], "max_retries": 0, "min_interval": 0})
    a.start(0.0)
    crash(a, ops, 0.0)
    assert a.backoff_until == pytest.approx(0.1)


def test_start_limit_burst_ends_in_failed_with_the_reason_and_operator_start_revives(ops):
    a = new_agent(ops, restart={"backoff_steps": [0], "max_retries": 0, "min_interval": 1, "start_limit_burst": 5, "start_limit_interval": 60})
    a.start(0.0)
    now = 0.0
    for _ in range(5):
        crash(a, ops, now)
        now = a.backoff_until
        a.tick(now)
        assert a.state == S.STARTING
    crash(a, ops, now)
    assert a.state == S.FAILED
    assert "5 automatic starts within 60s (restart.start_limit_burst 5)" in a.reason
    assert a.start(now + 1).ok and a.state == S.STARTING  # a fresh window
    crash(a, ops, now + 2)
    assert a.state == S.RESTARTING


def test_start_limit_counts_only_starts_inside_the_interval(ops):
    a = new_agent(ops, restart={"backoff_steps": [0], "max_retries": 0, "min_interval": 1, "start_limit_burst": 3, "start_limit_interval": 10})
    a.start(0.0)
    now = 0.0
    for _ in range(10):  # one start every 5 s: never 3 starts within 10 s
        crash(a, ops, now)
        assert a.state == S.RESTARTING
        due = a.backoff_until
        a.tick(due)
        now = due + 5
