"""Verb contracts (docs/architecture.md, "Declaring and calling a verb"): the parent's handlers answer with the
models in supervisor/wire/verbs, and the typed calls of workers and agentctl validate replies into them.

No process is started: the parent's side of control.ipc is a ROUTER socket in this test.
"""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest
import zmq
import zmq.asyncio

from supervisor.ctl.cli_context import Ctx
from supervisor.ctl.control_client import ClientError
from supervisor.parent.verbs import VERBS
from supervisor.wire.verbs import status as status_verb
from supervisor.wire.verbs import workers as workers_verb
from workers.link import UNAVAILABLE, ControlFailure, WorkerLink


@pytest.mark.parametrize("name", sorted(VERBS))
def test_every_handler_uses_its_wire_contract(name: str) -> None:
    handler = VERBS[name]
    contract = importlib.import_module("supervisor.wire.verbs." + handler.__name__.rsplit(".", 1)[1])
    assert contract.NAME == name
    assert handler.Args is contract.Args and handler.Result is contract.Result
    assert contract.Args.model_config.get("extra") == "forbid"  # a misspelt argument is refused, not ignored


def test_agentctl_refuses_a_reply_that_is_not_the_verbs_result() -> None:
    with pytest.raises(ClientError, match=r"unreadable reply to 'status' \(\d+ problems\)"):
        Ctx.validated(status_verb, {"agents": "none"})
    assert Ctx.validated(workers_verb, {"workers": [], "parent": {"applied": 3}}).parent == {"applied": 3}


async def _serve_one(router: zmq.asyncio.Socket, reply: dict) -> dict:
    """Answer one request with `reply` (its id filled in); returns the request."""
    identity, payload = await router.recv_multipart()
    request = json.loads(payload)
    await router.send_multipart([identity, json.dumps({"v": 1, "id": request["id"], **reply}).encode()])
    return request


@pytest.mark.parametrize("reply, code", [
    ({"ok": True, "result": {"workers": [{"name": "health"}], "parent": {}}, "error": None}, "internal"),
    ({"ok": False, "result": None, "error": {"code": "shutting_down", "message": "agentd is shutting down"}}, "shutting_down"),
])
def test_link_call_keeps_the_parents_error_code(tmp_path, reply: dict, code: str) -> None:
    async def run() -> None:
        link = WorkerLink(tmp_path, "test", want_state=False)
        router = link.ctx.socket(zmq.ROUTER)
        router.bind(f"ipc://{tmp_path / 'control.ipc'}")
        try:
            server = asyncio.create_task(_serve_one(router, reply))
            with pytest.raises(ControlFailure) as failure:
                await link.call(workers_verb, timeout=10.0)
            assert failure.value.code == code
            assert (await server)["verb"] == "workers"
        finally:
            router.close(linger=0)
            await link.close()

    asyncio.run(run())


def test_link_call_returns_the_result_model_and_says_when_nobody_answers(tmp_path) -> None:
    async def run() -> None:
        link = WorkerLink(tmp_path, "test", want_state=False)
        router = link.ctx.socket(zmq.ROUTER)
        router.bind(f"ipc://{tmp_path / 'control.ipc'}")
        try:
            answer = {"ok": True, "result": {"workers": [], "parent": {"applied": 7}}, "error": None}
            server = asyncio.create_task(_serve_one(router, answer))
            result = await link.call(workers_verb, timeout=10.0)
            assert isinstance(result, workers_verb.Result) and result.parent == {"applied": 7}
            assert (await server)["args"] == {}  # defaults are not sent
            with pytest.raises(ControlFailure) as failure:
                await link.call(status_verb, status_verb.Args(ids=["a"]), timeout=0.2)
            assert failure.value.code == UNAVAILABLE
        finally:
            router.close(linger=0)
            await link.close()

    asyncio.run(run())


def test_both_agentctl_paths_exit_by_the_same_rule() -> None:
    from supervisor.ctl.agentctl_main import exit_code

    running, failed = {"state": "running"}, {"state": "failed"}
    assert exit_code("status", {"agents": [running]}) == 0
    assert exit_code("status", {"agents": [running, failed]}) == 5
    done, refused = {"ok": True}, {"ok": False}
    assert exit_code("stop", {"results": [done], "pending": False}) == 0
    assert exit_code("restart", {"results": [done, refused], "pending": True}) == 1  # a failure outranks waiting
    assert exit_code("start", {"results": [done], "pending": True}) == 4
    assert exit_code("ping", {"pong": True}) == 0
