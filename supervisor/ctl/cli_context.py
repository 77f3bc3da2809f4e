"""What every agentctl command shares: where agentd is (-c, --run-dir, the environment), and `Ctx`, which
calls verbs through their typed contracts (supervisor/wire/verbs) and prints the answer or the error."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config
from supervisor.ctl.agentctl_main import DEFAULT_CONFIG, DEFAULT_RUN_DIR, fail
from supervisor.ctl.control_client import ClientError, ControlClient, DaemonUnavailable
from supervisor.ctl.tables import printable
from supervisor.wire.verbs import VerbContract
from supervisor.wire.verbs import status as status_verb


class Ctx:
    """What every command needs: how to reach the daemon, where its files are, and how to print."""

    def __init__(self, run_dir: Path, timeout: float, as_json: bool, source: str = "", dirs: "DaemonDirs | None" = None) -> None:
        self.client = ControlClient(run_dir, timeout)
        self.timeout = timeout
        self.as_json = as_json
        self.source = source  # how run_dir was chosen, for "not running" messages
        self.dirs = dirs  # data_dir and log_dir from the config, when one was read: enables offline views

    def call(self, verb: VerbContract, args: BaseModel | None = None, timeout: float | None = None) -> Any:
        """The verb's Result (supervisor/wire/verbs/<verb>.py); a failure is printed, and agentctl exits."""
        try:
            return self.validated(verb, self.client.call(verb.NAME, args, timeout))
        except DaemonUnavailable as exc:
            fail(self.unavailable_message(exc), exc.exit_code, self.as_json, getattr(exc, "code", None))
        except ClientError as exc:
            fail(str(exc), exc.exit_code, self.as_json, getattr(exc, "code", None))

    def try_call(self, verb: VerbContract, args: BaseModel | None = None) -> Any:
        """Like call, but hands back 'not running' (DaemonUnavailable) for the caller to fall back to what is on disk."""
        try:
            return self.validated(verb, self.client.call(verb.NAME, args))
        except DaemonUnavailable as exc:
            return exc
        except ClientError as exc:
            fail(str(exc), exc.exit_code, self.as_json, getattr(exc, "code", None))

    @staticmethod
    def validated(verb: VerbContract, raw: dict[str, Any]) -> Any:
        """The reply's result as the verb's Result model; ClientError when it does not fit."""
        try:
            return verb.Result.model_validate(raw)
        except ValidationError as exc:
            raise ClientError(f"agentd sent an unreadable reply to '{verb.NAME}' ({exc.error_count()} problems)") from None

    def unavailable_message(self, exc: Exception) -> str:
        return f"{exc} [{self.source}]" if self.source else str(exc)

    def offline_note(self, exc: Exception, what: str) -> None:
        """Say on stderr that agentd is down and that what follows comes from its files."""
        click.echo(f"agentctl: {self.unavailable_message(exc)}; showing {what}", err=True)

    def emit(self, result: BaseModel | dict[str, Any], human: str) -> None:
        """Print `human`, or with --json the result as agentd sent it."""
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        click.echo(json.dumps(result, indent=2) if self.as_json else printable(human))  # JSON escapes controls itself


@dataclass(frozen=True)
class DaemonDirs:
    """Where agentd keeps its files, from its config: what agentctl reads while agentd is down."""

    data_dir: Path
    log_dir: Path


@dataclass(frozen=True)
class Target:
    """Which agentd to talk to, and how that was decided (said in "not running" messages)."""

    run_dir: Path
    timeout: float | None
    source: str
    dirs: DaemonDirs | None = None


def _config_choice(config: str | None, run_dir: str | None) -> tuple[str | None, str]:
    """The config file to read, if any, and why: -c, then $AGENTD_CONFIG, then DEFAULT_CONFIG if present."""
    if config:
        return config, f"config {config} from -c"
    if run_dir:
        return None, f"--run-dir {run_dir}"
    if os.environ.get("AGENTD_CONFIG"):
        return os.environ["AGENTD_CONFIG"], f"config {os.environ['AGENTD_CONFIG']} from $AGENTD_CONFIG"
    if os.environ.get("AGENTD_RUN_DIR"):
        return None, f"run_dir {os.environ['AGENTD_RUN_DIR']} from $AGENTD_RUN_DIR"
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG, f"default config {DEFAULT_CONFIG}"
    return None, f"default run_dir {DEFAULT_RUN_DIR}; no -c, $AGENTD_CONFIG or {DEFAULT_CONFIG}"


def resolve_target(config: str | None, run_dir: str | None) -> Target:
    """Where agentd is: -c FILE, --run-dir, $AGENTD_CONFIG, $AGENTD_RUN_DIR, /etc/agentd/agentd.yaml, /run/agentd."""
    path, source = _config_choice(config, run_dir)
    if path:
        try:
            cfg = load_config(path)
            dirs = DaemonDirs(Path(cfg.daemon.data_dir), Path(cfg.daemon.log_dir))
            return Target(Path(cfg.daemon.run_dir), cfg.control.request_timeout, source, dirs)
        except ConfigError as exc:
            # A broken file must not lock the operator out: `reload` is how they see the daemon's
            # verdict on it. Take run_dir from the raw YAML when it can be read at all.
            found = _raw_run_dir(Path(path))
            if found is None:
                fail(f"cannot read the config to find agentd (use --run-dir):\n{exc}", 2)
            click.echo(f"agentctl: warning: {path} has errors; using its daemon.run_dir {found}", err=True)
            return Target(found, None, source)
    return Target(Path(run_dir or os.environ.get("AGENTD_RUN_DIR") or DEFAULT_RUN_DIR), None, source)


def _raw_run_dir(path: Path) -> Path | None:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    daemon = doc.get("daemon") if isinstance(doc, dict) else None
    raw = daemon.get("run_dir") if isinstance(daemon, dict) else None
    if raw is None:
        return Path(DEFAULT_RUN_DIR) if isinstance(doc, dict) else None
    return (path.resolve().parent / str(raw)).resolve()


def complete_agent_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of agent ids: from agentd when it answers within a second, else from its config."""
    root = ctx.find_root().params
    try:
        target = resolve_target(root.get("config"), root.get("run_dir"))
        ids = [a.id for a in status_verb.Result.model_validate(ControlClient(target.run_dir, 1.0).call(status_verb.NAME, None, timeout=1.0)).agents]
    except (SystemExit, Exception):  # completion must never print an error (or exit) into the shell
        ids = _ids_from_config(root.get("config"))
    return [i for i in ids if i.startswith(incomplete)]


def _ids_from_config(config: str | None) -> list[str]:
    path, _ = _config_choice(config, None)
    if not path:
        return []
    try:
        return [a.id for a in load_config(path).agents]
    except Exception:
        return []


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def command_ctx(click_ctx: click.Context, as_json: bool) -> Ctx:
    """The Ctx of one command, from the group's options and the command's own --json."""
    obj = click_ctx.obj
    return Ctx(obj["run_dir"], obj["timeout"], as_json or obj["json"], obj.get("source", ""), obj.get("dirs"))
