"""Agents started together at daemon start-up, launched from threads (process_ops.RealProcessOps.prelaunch),
are set up exactly as one started alone: their own session, only stdin/stdout/stderr, their own
environment and log (docs/configuration.md, "agents:")."""

from __future__ import annotations

import os

from tests.support.wait import wait_until

AGENTS = 8
# Prints who it is, then becomes `sleep` (same pid), so the agent's own descriptors can be read.
SCRIPT = 'echo "hello from $AGENTD_AGENT_ID"; exec sleep 1000'


def test_agents_started_at_once_each_get_their_own_session_descriptors_environment_and_log(agentd):
    agents = [{"id": f"s{i}", "binary_path": "/bin/sh", "args": ["-c", SCRIPT], "start_seconds": 0.2,
               "health_check": {"heartbeat_timeout": None}, "log": {"format": "stamped" if i % 2 else "plain"}}
              for i in range(AGENTS)]
    agentd.write_config(agents)
    agentd.start()
    pids = {a["id"]: agentd.wait_state(a["id"], "running")["pid"] for a in agents}
    assert len(set(pids.values())) == AGENTS
    for agent_id, pid in pids.items():
        wait_until(lambda: os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "sleep", message=f"{agent_id} to exec sleep")
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid, agent_id  # a session of its own
        # No descriptor of agentd's, of a log pipe of another agent or of a launch in another thread.
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2], agent_id
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.partition(b"=")[::2] for item in f.read().split(b"\0") if item)
        assert env[b"AGENTD_AGENT_ID"] == agent_id.encode()
        log = agentd.log_dir / agent_id / "agent.log"
        wait_until(lambda: f"hello from {agent_id}" in log.read_text(errors="replace"), message=f"{agent_id}'s line in its log")
        others = [other for other in pids if other != agent_id and f"hello from {other}\n" in log.read_text(errors="replace")]
        assert not others, f"{agent_id}'s log holds lines of {others}"
