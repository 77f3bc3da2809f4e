"""/metrics of a real agentd, parent and HTTP intake worker, checked by Prometheus' own promtool; the shipped
alert rules and dashboard checked against the names /metrics really exposes (docs/metrics.md)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from supervisor.wire.version import __version__
from tests.support import promtool as pt
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "agentd-alerts.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "agentd-dashboard.json"


@pytest.fixture(scope="session")
def promtool():
    return pt.promtool_path()


def hb_agent(agentd, agent_id, mode, **spec):
    return agentd.helper_agent(agent_id, mode, "--interval", "0.2", health_check={"heartbeat_timeout": "30s"}, **spec)


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def family_names(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def start_daemon(agentd) -> str:
    """agentd with one heartbeating agent, one that crashes (restarts counted) and one stopped; the /metrics URL."""
    agentd.write_config([
        hb_agent(agentd, "beats", "heartbeat-http"),
        agentd.helper_agent("crashy", "crash-later", "--after", "0.5"),
        agentd.helper_agent("idle", "well-behaved"),
    ])
    agentd.start()
    agentd.wait_state("beats", "running", timeout=40)
    agentd.wait_state("idle", "running", timeout=40)
    agentd.call("stop", {"ids": ["idle"]})
    agentd.wait_state("idle", "stopped", timeout=40)
    workers = wait_until(lambda: {w["name"]: w for w in agentd.call("workers")["workers"] if w["state"] == "running"} or None, timeout=30)
    return f"http://{workers['heartbeat-http-0']['info']['listen']}/metrics"


def first(fetch, has):
    """A predicate for wait_until: fetch() when has(it), else None."""
    def probe():
        text = fetch()
        return text if has(text) else None
    return probe


def parent_text(agentd) -> str:
    return agentd.call("metrics")["text"]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def test_parent_and_intake_metrics_pass_promtool(agentd, promtool):
    url = start_daemon(agentd)
    restarted = lambda t: 'agentd_agent_restarts_total{agent="crashy"' in t  # noqa: E731
    parent = wait_until(first(lambda: parent_text(agentd), restarted), timeout=40, message="a counted restart of crashy")
    # The worker appends the parent's text, refreshed every 5 s: wait for one that has the restart too.
    # ...and the Unix worker's gauges, which appear with that worker's first report (later on a busy machine).
    unix_reported = lambda t: 'agentd_worker_connections_open{worker="heartbeat-unix"}' in t  # noqa: E731
    intake = wait_until(first(lambda: scrape(url), lambda t: restarted(t) and unix_reported(t)), timeout=40)
    for name, text in (("parent", parent), ("intake worker", intake)):
        done = pt.check(promtool, "metrics", stdin=text)
        assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), f"promtool on the {name}'s /metrics:\n{done.stdout}{done.stderr}"
    s = samples(intake)
    assert s[f'agentd_build_info{{python="{__import__("platform").python_version()}",version="{__version__}"}}'] == 1
    assert s['agentd_agent_up{agent="beats",type="custom"}'] == 1 and s['agentd_agent_up{agent="idle",type="custom"}'] == 0
    # Levels are gauges of their own, never samples of a *_total counter.
    assert not [k for k in s if k.startswith("agentd_worker_events_total") and "connections_open" in k]
    assert 'agentd_worker_connections_open{worker="heartbeat-unix"}' in s
    assert not family_names(intake) & {"agentd_worker_connections_open_total"}


def test_health_tells_unhealthy_from_not_judged_and_states_keep_their_series(agentd):
    start_daemon(agentd)

    def text_when(predicate):
        return wait_until(first(lambda: parent_text(agentd), lambda t: predicate(samples(t))), timeout=40)

    text = text_when(lambda s: s.get('agentd_agent_healthy{agent="beats"}') == 1)
    s = samples(text)
    assert s['agentd_agent_health_judged{agent="beats"}'] == 1
    assert s['agentd_agent_health_judged{agent="idle"}'] == 0 and s['agentd_agent_healthy{agent="idle"}'] == 0  # stopped: not judged
    states = {k: v for k, v in s.items() if k.startswith('agentd_agent_state{agent="beats"')}
    assert states['agentd_agent_state{agent="beats",state="running"}'] == 1 and sum(states.values()) == 1
    assert agentd.call("stop", {"ids": ["beats"]})
    after = samples(text_when(lambda s: s.get('agentd_agent_state{agent="beats",state="stopped"}') == 1))
    # The same series before and after the state change: only the values moved.
    assert {k for k in after if k.startswith('agentd_agent_state{agent="beats"')} == states.keys()
    assert after['agentd_agent_health_judged{agent="beats"}'] == 0


# ----------------------------------------------------------------------------------------------- etc/


def test_alert_rules_pass_promtool(promtool):
    done = pt.check(promtool, "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_on_agentd_series_and_not_on_unjudged_health(promtool):
    done = subprocess.run([str(promtool), "test", "rules", str(ROOT / "tests" / "fixtures" / "prometheus" / "agentd-alerts.test.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def metric_names_in(expr: str) -> set[str]:
    """agentd_* metric names a PromQL expression reads (labels and functions are not agentd_* names)."""
    return set(re.findall(r"\b(agentd_[a-z0-9_]+)", expr))


def exposed_names(agentd) -> set[str]:
    url = start_daemon(agentd)
    text = wait_until(first(lambda: scrape(url), lambda t: "agentd_agent_state" in t), timeout=40)
    return family_names(text)


def test_dashboard_and_rules_read_only_metrics_that_exist(agentd):
    exposed = exposed_names(agentd)
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [v.get("query", "") if isinstance(v.get("query"), str) else v["query"].get("query", "")
              for v in board.get("templating", {}).get("list", []) if v.get("type") == "query"]
    assert exprs, "the dashboard has no queries"
    import yaml

    rules = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for where, expr_list in (("dashboard", exprs), ("alert rules", rules)):
        used = set().union(*(metric_names_in(e) for e in expr_list))
        assert used, where
        assert used <= exposed, f"{where} read metrics /metrics does not expose: {sorted(used - exposed)}"
