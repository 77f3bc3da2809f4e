"""The `agentd` command: `run -c FILE` (foreground daemon) and `check-config FILE`."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from supervisor.wire.version import __version__
from supervisor.config.checks import check_accounts, check_binaries, check_tls_files
from supervisor.config.errors import ConfigError
from supervisor.config.loading import load_config
from supervisor.config.schema import dump_effective
from supervisor.common.logging_setup import setup_logging
from supervisor.common.pidfile import AlreadyRunning

log = logging.getLogger("agentd")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agentd")
def cli() -> None:
    """agentd: keeps a node's agents alive, judges their health, reports to a Manager."""


@cli.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False), envvar="AGENTD_CONFIG", help="Config file (YAML).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Override daemon.log_level.")
def run(config_path: str, log_level: str | None) -> None:
    """Run the daemon in the foreground (systemd runs this)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"agentd: invalid configuration, not starting:\n{exc}", err=True)
        sys.exit(2)
    tls_problems = check_tls_files(config)
    if tls_problems:
        click.echo("agentd: invalid configuration, not starting:\n" + "\n".join(f"{config.source}: {p}" for p in tls_problems), err=True)
        sys.exit(2)
    try:
        setup_logging(log_level or config.daemon.log_level, config.daemon.log_format, log_file=config.daemon.log_file)
    except OSError as exc:
        click.echo(f"agentd: daemon.log_file {config.daemon.log_file}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    from supervisor.parent.daemon import Daemon  # imported late so check-config stays light
    from supervisor.common.cgroups import CgroupError
    from supervisor.parent.instance_lock import InstanceLocked
    from supervisor.parent.listeners import ListenError
    from supervisor.parent.worker_specs import forked_kinds
    from supervisor.parent.zygote import fork_zygote

    # Now, while this process has no ZeroMQ context and no thread. It has imported what workers share,
    # and what it does not dirty later it shares with them too (forking before these imports measured
    # 4 MiB worse in all, before the config made no difference: docs/decisions.md).
    zygote = fork_zygote()
    if zygote is not None:
        zygote.configure([f"workers.{kind}" for kind in forked_kinds(config)], config.daemon.log_level, config.daemon.log_format)
    try:
        code = asyncio.run(Daemon(config, config.source, zygote).run())
    except (AlreadyRunning, InstanceLocked, ListenError, CgroupError, ValueError) as exc:
        click.echo(f"agentd: {exc}", err=True)
        sys.exit(1)
    except PermissionError as exc:
        click.echo(f"agentd: permission denied: {exc.filename or exc} (run as root, or point run_dir/data_dir/log_dir somewhere writable)", err=True)
        sys.exit(1)
    except OSError as exc:  # a full or read-only disk at start: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"agentd: cannot start: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    finally:
        if zygote is not None:
            zygote.close()  # after a failed start-up too (the daemon closes it on a normal exit)
    sys.exit(code)


@cli.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the config is valid.")
def check_config(config_path: str, quiet: bool) -> None:
    """Validate a config file; print the effective config, or every problem found."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    from supervisor.parent.agent_config_check import check_agent_configs

    for warning in [*config.warnings, *check_binaries(config), *check_agent_configs(config.agents), *check_accounts(config)]:
        click.echo(f"warning: {warning}", err=True)
    tls_problems = check_tls_files(config)
    if tls_problems:
        click.echo("\n".join(f"{config.source}: {p}" for p in tls_problems), err=True)
        sys.exit(1)
    from supervisor.common.cgroups import detect

    # dry_run: a check creates no cgroup and moves no process.
    tracking = detect(config.cgroups.mode, config.cgroups.root, dry_run=True)
    unmet = tracking.unmet(config.cgroups.mode)
    if unmet:
        click.echo(f"{config.source}: {unmet}", err=True)
        sys.exit(1)
    if not quiet:
        click.echo(f"# process tracking on this machine: {tracking.describe()}")
        click.echo(dump_effective(config))


@cli.command("migrate-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def migrate_config(config_path: str) -> None:
    """Print the agentd-native equivalent of the original daemon's config file, with a comment on every changed key."""
    from pathlib import Path

    from supervisor.config.loading import parse_config
    from supervisor.config.schema import SECTIONS
    from supervisor.config.yaml_file import read_config_file
    from supervisor.config.original_config import is_original, render, translate

    path = Path(config_path)
    try:
        data, duplicates = read_config_file(path)
        if duplicates:
            raise ConfigError(duplicates)
        if not is_original(data):
            click.echo(f"{path}: already in agentd's native form (no key of the original daemon's format); nothing to migrate", err=True)
            sys.exit(1)
        translation = translate(data, frozenset(SECTIONS))
        parse_config(data, str(path), path.resolve().parent)  # every problem, worded as for `check-config`
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(render(translation, str(path)), nl=False)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="agentd")


if __name__ == "__main__":
    main()
