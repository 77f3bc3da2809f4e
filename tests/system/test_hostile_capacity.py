"""Issue 8, break 3 with real processes: an unprivileged local user holding every connection it can get on
both intakes (idle Unix connections, slow HTTP headers) does not cost the agents their heartbeats."""

from __future__ import annotations

import os
import subprocess

from tests.support.hostile import FAST, Legit, http_address, outsider, run_as, system_python, workers  # noqa: F401 (fixture)
from tests.support.processes import kill_tree
from tests.support.wait import wait_until

FLOODER = r'''
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # any user may: enough for every slot
unix_path, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
held = {"unix": [], "http": []}
def top_up(kind):
    conns = held[kind]
    for c in list(conns):  # drop what the server closed
        try:
            c.setblocking(False)
            if c.recv(1, socket.MSG_PEEK) == b"":
                conns.remove(c); c.close()
        except BlockingIOError:
            pass
        except OSError:
            conns.remove(c); c.close()
    while len(conns) < 1100:  # more than max_connections (1024)
        try:
            if kind == "unix":
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.settimeout(0.5); c.connect(unix_path)
            else:
                c = socket.create_connection((host, port), timeout=0.5)
                c.sendall(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\n")  # and never the rest: slow headers
        except OSError:
            return  # out of fds, or refused: try again on the next round
        conns.append(c)
end = time.monotonic() + seconds
while time.monotonic() < end:
    top_up("unix"); top_up("http")
    print(len(held["unix"]), len(held["http"]), flush=True)
    time.sleep(0.05)
'''


def test_one_user_holding_every_slot_it_can_does_not_cost_agents_their_heartbeats(agentd, outsider, tmp_path):
    agentd.write_config([
        agentd.helper_agent("h", "heartbeat-http", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("s", "heartbeat-socket", "--interval", "0.2", health_check=FAST),
    ])
    agentd.start()
    legit = Legit(agentd, ["h", "s"])
    script = agentd.base / "flooder.py"
    script.write_text(FLOODER)
    os.chmod(script, 0o644)
    host, port = http_address(agentd)
    unix_path = agentd.run_dir / "heartbeat.sock"
    python = system_python()
    flooder = run_as(outsider, [python, str(script), str(unix_path), host, str(port), "40"], agentd, stdout=subprocess.PIPE, text=True)
    try:
        line = wait_until(lambda: flooder.stdout.readline(), timeout=30, message="the flooder's first round")
        assert line
        wait_until(lambda: workers(agentd)["heartbeat-unix"]["counters"].get("rejected_too_many_unverified", 0) > 0
                   and workers(agentd)["heartbeat-http-0"]["counters"].get("rejected_too_many_unverified", 0) > 0,
                   timeout=30, message="the flooder hitting both per-user limits")
        legit.assert_unharmed(watch_for=8, log_growth_limit=32 * 1024)
        counters = {name: workers(agentd)[name]["counters"] for name in ("heartbeat-unix", "heartbeat-http-0")}
        assert counters["heartbeat-unix"]["connections_open"] <= 8 + 4, counters  # the outsider's 8, plus agents'
        assert "Traceback" not in agentd.log_text()
    finally:
        kill_tree(flooder.pid)
        flooder.wait()
        flooder.stdout.close()
