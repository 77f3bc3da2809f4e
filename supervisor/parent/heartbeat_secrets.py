"""Per-agent heartbeat secrets: what an agent may present (Bearer) to prove an HTTP heartbeat is its own.

Each secret is HMAC-SHA256(node key, agent id): the node key is made once and kept in data_dir/heartbeat.key
(0600, readable by root only), so an agent re-adopted after an agentd restart still holds a valid one
without anything per agent being stored. agentd puts it in the agent's environment as
AGENTD_HEARTBEAT_TOKEN (a configured `heartbeat.token` takes its place). See docs/decisions.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "AGENTD_HEARTBEAT_TOKEN"
KEY_BYTES = 32


class HeartbeatSecrets:
    """Derives agents' heartbeat secrets from the node key in `data_dir`, creating the key on first use."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "heartbeat.key"
        self._key = self._load_or_create()

    def _load_or_create(self) -> bytes:
        try:
            key = bytes.fromhex(self.path.read_text().strip())
            if len(key) == KEY_BYTES:
                return key
            log.warning("%s is not a %d-byte hex key; making a new one (agents get new secrets at their next start)", self.path, KEY_BYTES)
        except FileNotFoundError:
            pass
        except ValueError:
            log.warning("%s is not hex; making a new one (agents get new secrets at their next start)", self.path)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = self.path.with_name(".heartbeat.key.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        return key

    def for_agent(self, agent_id: str) -> str:
        """The agent's secret: 43 URL-safe characters, the same for this node key and id every time."""
        digest = hmac.new(self._key, agent_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
