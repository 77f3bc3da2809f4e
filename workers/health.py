"""The health worker, `python -m workers.health`: judges agents (docs/health.md) and samples resources.

It reports only: verdicts, a health report per judging round and resource samples go to the parent, which acts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.config.daemon_sections import ResourcesSettings
from supervisor.wire.messages import AgentHealth, AgentView, HealthReport, ResourceSample, ResourceSamples, Verdict
from supervisor.common.shared_ticks import sleep_to_tick
from supervisor.common.stall_watch import StallWatch
from supervisor.wire.states import UP_STATES
from supervisor.wire.verbs import workers as workers_verb
from workers.health_judge import DEAD_RECHECK, HealthJudge, HealthRules, rules_of
from workers.link import ControlFailure, WorkerLink
from workers.tree_sampler import TreeSampler
from workers.runner import begin_process, load_worker_settings, start_link, stop_event, worker_arg_parser

if TYPE_CHECKING:
    from workers.http_probe import EndpointProbe

log = logging.getLogger("workers.health")

# Judging sleeps until the next agent is due (its health_check.interval), or until something changes: a new
# agent view, or, while a verdict is out, heartbeat times or a stall that could refute it (issue 11: an idle
# node must not walk every agent every second). This is only the safety net.
MAX_TICK = 30.0
MIN_TICK = 0.05
WORKERS_TIMEOUT = 2.0  # the `workers` request must not hold up a sampling round for long
COUNTERS = ("judged", "samples", "sample_errors", "endpoint_checks", "endpoint_failures")


class HealthWorker:
    """Judging and sampling loops on top of a started WorkerLink."""

    def __init__(self, link: WorkerLink, resources: ResourcesSettings, *, sampler: TreeSampler | None = None) -> None:
        self.link = link
        self.name = link.name
        self.resources = resources
        self.sampler = sampler or TreeSampler()
        self.judge = HealthJudge(worker=link.name)
        self.counters = link.counters
        for key in COUNTERS:
            self.counters[key] += 0  # reported from the first beat, so a zero is visible as a zero
        # psutil reads block; one thread keeps them off the loop and keeps the sampler single-threaded.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler")
        self._samples: dict[str, ResourceSample] = {}
        self._sampled_at: dict[str, float] = {}  # monotonic
        self._judged_at: dict[str, tuple[int, float]] = {}  # id -> (generation, monotonic)
        self._endpoint_done: dict[str, tuple[int, bool]] = {}  # id -> (generation, ok), not yet judged
        self._endpoint_tasks: dict[str, asyncio.Task] = {}
        # Imported on the first http_endpoint check: httpx costs ~5 MB RSS that nodes without one never pay.
        self._probe: EndpointProbe | None = None
        self._endpoint_ok: dict[str, bool] = {}  # last result, so a failing endpoint is logged when it starts failing
        self._verdict_gen: dict[str, int] = {}  # generation that got a verdict: nothing more to check until it is replaced
        self._unsent: list[Verdict] = []
        self._last_report: dict[str, AgentHealth] | None = None
        self._processes: list[tuple[str, int]] = []  # agentd's workers from the last `workers` reply
        self._wake = asyncio.Event()
        self._views: dict[str, AgentView] = {}
        # Our own stalls: after one, the heartbeat times we hold may be stale, so they count like an intake
        # outage (and like a parent stall for the other verdicts).
        self.stalls = StallWatch(f"health worker {link.name}")
        self.stalls.listeners.append(lambda _stall: self._wake_if_verdict_out())
        self._rules: dict[str, tuple[AgentView, HealthRules]] = {}  # per view: rules_of is not free for 200 agents
        link.on_change.append(self._on_change)

    def _on_change(self) -> None:
        # Heartbeat times change every second; a new or changed agent view needs a judgement now, and
        # an outstanding verdict may be refuted by new times (an intake restart, a heartbeat, a stall).
        agents = self.link.agents
        if len(agents) != len(self._views) or any(self._views.get(k) is not v for k, v in agents.items()):
            self._views = dict(agents)
            self._wake.set()
        else:
            self._wake_if_verdict_out()

    def _wake_if_verdict_out(self) -> None:
        agents = self.link.agents
        if any((a := agents.get(agent_id)) is not None and a.generation == gen for agent_id, gen in self._verdict_gen.items()):
            self._wake.set()

    def rules(self, agent: AgentView) -> HealthRules:
        """rules_of(agent), computed once per agent view."""
        cached = self._rules.get(agent.id)
        if cached is None or cached[0] is not agent:
            cached = self._rules[agent.id] = (agent, rules_of(agent))
        return cached[1]

    async def run(self) -> None:
        """Run both loops until cancelled."""
        try:
            await asyncio.gather(self._judge_loop(), self._sample_loop(), self.stalls.run())
        finally:
            for task in self._endpoint_tasks.values():
                task.cancel()
            await asyncio.gather(*self._endpoint_tasks.values(), return_exceptions=True)
            if self._probe is not None:
                await self._probe.aclose()
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------- judging

    async def _judge_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self.judge_round()
            except Exception:  # one bad round must not end judging for good
                log.exception("judging round failed")
                delay = MAX_TICK
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def _due(self, now: float, agents: dict[str, AgentView]) -> tuple[list[AgentView], float]:
        """The agents whose interval has elapsed, and how long until the next one is due."""
        due: list[AgentView] = []
        wait = MAX_TICK
        for agent in agents.values():
            if agent.operator_stopped or agent.state not in UP_STATES:
                continue
            if self._verdict_gen.get(agent.id) == agent.generation:
                continue  # the judge stays quiet about it; no samples or endpoint checks to spend either
            interval = self.rules(agent).interval
            last = self._judged_at.get(agent.id)
            if last is None or last[0] != agent.generation or now - last[1] >= interval:
                due.append(agent)
                wait = min(wait, interval)
            else:
                wait = min(wait, last[1] + interval - now)
        return due, max(MIN_TICK, wait)

    async def judge_round(self) -> float:
        """Judge the agents that are due; returns the seconds until the next round."""
        agents = dict(self.link.agents)
        self._forget(agents)
        now = time.monotonic()
        due, wait = self._due(now, agents)
        if due:
            await self._fresh_samples(due, now)
            # The link may have changed while we sampled; judge against what we sampled for.
            agents = dict(self.link.agents)
        results: dict[str, bool | None] = {}
        for agent in due:
            done = self._endpoint_done.pop(agent.id, None)
            if done is not None and done[0] == agent.generation:
                results[agent.id] = done[1]
            self._judged_at[agent.id] = (agent.generation, now)
        self.stalls.observe(now)
        own = self.stalls.last_end
        verdicts, report = self.judge.judge(
            now, agents, dict(self.link.last_heartbeat_mono), self._samples, results, _latest(self.link.intake_restarted_mono, own),
            due={a.id for a in due}, wall=time.time(), stalled_until=_latest(self.link.parent_stalled_until, own),
        )
        if self.judge.reopened:
            self._unsent = [v for v in self._unsent if v.agent_id not in self.judge.reopened]
        for agent_id in self.judge.reopened:
            self._verdict_gen.pop(agent_id, None)  # judged again from fresh evidence
            self.counters["verdicts_reopened"] += 1
            log.info("%s: verdict reopened: agentd could not take in what would refute it (stall, intake outage or a later heartbeat)", agent_id)
        self.counters["judged"] += sum(1 for a in due if a.id in agents)
        for verdict in verdicts:
            self._verdict_gen[verdict.agent_id] = verdict.generation
            self.counters[f"verdicts_{verdict.verdict}"] += 1
            log.warning("%s (generation %d): %s: %s", verdict.agent_id, verdict.generation, verdict.verdict, verdict.detail)
        await self._send_verdicts(verdicts, agents)
        if due or report != self._last_report:
            if await self.link.send(HealthReport(worker=self.name, agents=report)):
                self._last_report = report
        for agent in due:
            current = agents.get(agent.id)
            if current is not None and self._verdict_gen.get(agent.id) != current.generation:
                self._start_endpoint_check(current)
        if any((a := agents.get(i)) is not None and a.generation == g for i, g in self._verdict_gen.items()):
            wait = min(wait, DEAD_RECHECK)  # a refused `dead` verdict is judged again then (health_judge.py)
        return wait

    async def _send_verdicts(self, verdicts: list[Verdict], agents: dict[str, AgentView]) -> None:
        """Send new verdicts and retry unsent ones: the judge will not repeat a verdict, so none may be lost."""
        pending = [v for v in self._unsent if (a := agents.get(v.agent_id)) is not None and a.generation == v.generation]
        self._unsent = []
        for verdict in pending + verdicts:
            if not await self.link.send(verdict):
                self._unsent.append(verdict)

    async def _fresh_samples(self, due: list[AgentView], now: float) -> None:
        """Sample the due agents whose latest sample is older than their interval or of another generation."""
        stale = []
        for agent in due:
            sample = self._samples.get(agent.id)
            if agent.pid is None:
                continue
            if sample is None or sample.generation != agent.generation or now - self._sampled_at.get(agent.id, float("-inf")) >= self.rules(agent).interval:
                stale.append(agent)
        if stale:
            loop = asyncio.get_running_loop()
            samples, errors = await loop.run_in_executor(self._pool, self._sample_agents, stale)
            self._count(samples, errors)
            self._keep(samples, time.monotonic())

    def _forget(self, agents: dict[str, AgentView]) -> None:
        """Drop everything about agents that left the configuration: every map here stays bounded."""
        for table in (self._samples, self._sampled_at, self._judged_at, self._endpoint_done, self._endpoint_ok, self._verdict_gen, self._rules):
            for agent_id in table.keys() - agents.keys():
                del table[agent_id]
        for agent_id in self._endpoint_tasks.keys() - agents.keys():
            self._endpoint_tasks.pop(agent_id).cancel()

    # ----------------------------------------------------------------- endpoint checks

    def _start_endpoint_check(self, agent: AgentView) -> None:
        rules = self.rules(agent)
        if rules.http_endpoint is None:
            return
        running = self._endpoint_tasks.get(agent.id)
        if running is not None and not running.done():
            return  # a slow endpoint still has its own timeout to run out
        self._endpoint_tasks[agent.id] = asyncio.create_task(
            self._check_endpoint(agent.id, agent.generation, rules), name=f"endpoint-{agent.id}"
        )

    async def _check_endpoint(self, agent_id: str, generation: int, rules: HealthRules) -> None:
        if self._probe is None:
            from workers.http_probe import EndpointProbe

            self._probe = EndpointProbe()
        url = rules.http_endpoint
        ok, why = await self._probe.get(url, rules.http_timeout, ca_file=rules.http_ca_file, verify=rules.http_tls_verify)
        self.counters["endpoint_checks"] += 1
        if not ok:
            self.counters["endpoint_failures"] += 1
            # Logged when it starts failing; the verdict says the rest.
            log.log(logging.INFO if self._endpoint_ok.get(agent_id, True) else logging.DEBUG, "%s: GET %s failed: %s", agent_id, url, why)
        elif not self._endpoint_ok.get(agent_id, True):
            log.info("%s: GET %s answers again (%s)", agent_id, url, why)
        self._endpoint_ok[agent_id] = ok
        self._endpoint_done[agent_id] = (generation, ok)
        self._endpoint_tasks.pop(agent_id, None)

    # ----------------------------------------------------------------- sampling

    async def _sample_loop(self) -> None:
        while True:
            try:
                await self.sample_round()
            except Exception:  # one bad round must not end sampling for good
                log.exception("sampling round failed")
            await sleep_to_tick(self.resources.interval)  # with the stall watch: no wake-up of its own

    async def sample_round(self) -> None:
        """Sample every agent tree and agentd's own processes; send them as one ResourceSamples message."""
        processes = await self._agentd_processes()
        agents = [a for a in self.link.agents.values() if a.pid]
        loop = asyncio.get_running_loop()
        samples, errors = await loop.run_in_executor(self._pool, self._sample_everything, agents, processes)
        self._count(samples, errors)
        self._keep(samples, time.monotonic())
        self.judge.observe(time.monotonic(), dict(self.link.agents), {s.agent_id: s for s in samples if s.generation is not None})
        await self.link.send(ResourceSamples(worker=self.name, samples=samples))

    async def _agentd_processes(self) -> list[tuple[str, int]]:
        """agentd's own processes by name: the parent, each worker from the `workers` verb, and us."""
        try:
            reply = await self.link.call(workers_verb, timeout=WORKERS_TIMEOUT)
            self._processes = [(f"agentd/{w.name}", w.pid) for w in reply.workers if w.pid and w.name != self.name]
        except ControlFailure as exc:
            log.debug("workers request failed (%s); sampling the last known worker list", exc)
        return [("agentd/parent", os.getppid()), *self._processes, (f"agentd/{self.name}", os.getpid())]

    def _keep(self, samples: list[ResourceSample], now: float) -> None:
        known = self.link.agents
        for sample in samples:
            if sample.agent_id in known:
                self._samples[sample.agent_id] = sample
                self._sampled_at[sample.agent_id] = now

    def _sample_agents(self, agents: list[AgentView]) -> tuple[list[ResourceSample], int]:
        """In the sampler thread: one sample per agent tree, and the count of failures (each costs one agent)."""
        self.sampler.scan()
        out, errors = [], 0
        for agent in agents:
            try:
                out.append(_stamped(self.sampler.sample(agent, time.time())))
            except Exception:
                errors += 1
                log.exception("%s: sampling failed", agent.id)
        return out, errors

    def _sample_everything(self, agents: list[AgentView], processes: list[tuple[str, int]]) -> tuple[list[ResourceSample], int]:
        """In the sampler thread: every agent tree, then agentd's own processes one by one."""
        out, errors = self._sample_agents(agents)
        for name, pid in processes:
            try:
                out.append(_stamped(self.sampler.sample_pid(name, pid, time.time())))
            except Exception:
                errors += 1
                log.exception("%s: sampling failed", name)
        return out, errors

    def _count(self, samples: list[ResourceSample], errors: int) -> None:
        # Counted here on the loop thread: the beat loop copies the counters, never mid-update.
        self.counters["samples"] += len(samples)
        self.counters["sample_errors"] += errors


def _latest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _stamped(sample: ResourceSample) -> ResourceSample:
    """The sample with its monotonic time: threshold durations must not move with the wall clock."""
    sample.mono = time.monotonic()
    return sample


# ----------------------------------------------------------------------------------------------- process


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return worker_arg_parser("health", __doc__, "health", 'JSON with a "resources" object (other keys are ignored)',
                             config_help="standalone: read resources and run_dir from this config").parse_args(argv)


async def _run(run_dir: Path, name: str, resources: ResourcesSettings) -> None:
    stop = stop_event()
    # We queue no heartbeats: the link's 5 ms flush timer would cost more CPU than all our judging.
    link = WorkerLink(run_dir, name, want_state=True, flush_interval=1.0)
    if not await start_link(link, stop):
        return
    stopping = asyncio.create_task(stop.wait())
    worker = HealthWorker(link, resources)
    log.info("%s: judging %d agents; sampling every %g s", name, len(link.agents), resources.interval)
    running = asyncio.create_task(worker.run())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    log.info("%s: stopping", name)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await link.close()


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT; 0 on a clean stop."""
    args = _parse_args(argv)
    begin_process(args)
    loaded = load_worker_settings(args, ResourcesSettings, lambda c: c.resources, section="resources")
    if loaded is None:
        return 2
    run_dir, resources = loaded
    asyncio.run(_run(run_dir, args.name, resources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
