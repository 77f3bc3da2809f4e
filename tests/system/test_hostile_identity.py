"""Issue 8, break 2 with real processes: an HTTP heartbeat for agent A is accepted only from A's own process
tree (the kernel's socket owner, found among A's open files) or with A's secret. A local user cannot keep a
hung agent alive nor forge its version; agents sending from their own process, and Unix-socket agents in
the original daemon's format, keep working unchanged."""

from __future__ import annotations

import json
import subprocess

from tests.support.hostile import FAST, Legit, agent_secret, http_address, outsider, post, run_as, system_python, workers  # noqa: F401
from tests.support.processes import kill_tree
from tests.support.wait import wait_until

FORGER = r'''
import http.client, json, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
targets = json.loads(sys.argv[4])  # [[agent_id, pid], ...]
codes = {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    for agent_id, pid in targets:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("POST", "/heartbeat", json.dumps({"agent_id": agent_id, "pid": pid, "version": "forged", "cpu": 99.0}),
                         {"Content-Type": "application/json"})
            code = conn.getresponse().status
        except OSError:
            code = "error"
        finally:
            conn.close()
        codes[str(code)] = codes.get(str(code), 0) + 1
    print(json.dumps(codes), flush=True)
    time.sleep(0.3)
'''


def test_forged_http_heartbeats_neither_keep_a_hung_agent_alive_nor_change_reported_fields(agentd, outsider):
    hung = agentd.helper_agent("hung", "heartbeat-then-stall", "--beats", "3", "--interval", "0.3",
                               health_check=FAST, restart={"backoff_steps": [0.2], "max_retries": 50})
    agentd.write_config([
        agentd.helper_agent("h", "heartbeat-http", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("s", "heartbeat-socket", "--interval", "0.2", health_check=FAST),  # no agent_id: peer credentials
        hung,
    ])
    agentd.start()
    legit = Legit(agentd, ["h", "s"])
    agentd.wait_state("hung", "running")
    pids = {a: agentd.status(a)["pid"] for a in ("h", "s", "hung")}
    script = agentd.base / "forger.py"
    script.write_text(FORGER)
    script.chmod(0o644)
    host, port = http_address(agentd)
    forger = run_as(outsider, [system_python(), str(script), host, str(port), "15", json.dumps([[a, p] for a, p in pids.items()])],
                    agentd, stdout=subprocess.PIPE, text=True)
    try:
        # The hung agent is restarted for its own silence, whatever the outsider sends for it.
        wait_until(lambda: agentd.status("hung")["restarts"] >= 1, timeout=40, message="the hung agent restarted")
        assert agentd.status("hung")["last_restart_reason"].startswith("no_heartbeat"), agentd.status("hung")
        legit.assert_unharmed()
        for agent_id in ("h", "s"):
            assert agentd.status(agent_id)["version"] == "helper-1"  # never "forged"
        counters = workers(agentd)["heartbeat-http-0"]["counters"]
        assert counters.get("rejected_sender_not_agent", 0) >= 3, counters
    finally:
        kill_tree(forger.pid)
        forger.wait()
        codes = {}
        for line in forger.stdout:
            codes = json.loads(line)
        forger.stdout.close()
    assert "200" not in codes and codes.get("403", 0) >= 3, codes


def test_the_agents_secret_proves_a_sender_outside_its_tree(agentd):
    agentd.write_config([
        agentd.helper_agent("h", "heartbeat-http", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("s", "heartbeat-socket", "--interval", "0.2", health_check=FAST),
    ])
    agentd.start()
    legit = Legit(agentd, ["h", "s"])
    pid = legit.before["s"]["pid"]
    body = json.dumps({"agent_id": "s", "pid": pid, "version": "2.0-from-a-script"})
    status, reply = post(agentd, body)
    assert status == 403 and reply["message"].startswith("this connection is not held by agent 's'"), reply
    status, reply = post(agentd, body, headers={"Authorization": "Bearer not-the-secret"})
    assert status == 403, reply
    # The secret agentd gave the agent (readable by root and the agent's own user, as its environment is).
    status, reply = post(agentd, body, headers={"Authorization": f"Bearer {agent_secret(pid)}"})
    assert status == 200, reply
    wait_until(lambda: agentd.status("s")["version"] in ("2.0-from-a-script", "helper-1"), timeout=10)
    legit.assert_unharmed()
