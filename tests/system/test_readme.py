"""The README and docs/ stay true: every relative link resolves, and the README's ten-line tour runs
against a real agentd (the example config, moved to temp dirs and free ports) without a failure."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.daemon import ROOT

DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.add(_slug(line.lstrip("#")))
    return found


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        fence = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http:, https:, mailto:
                file_part, _, anchor = target.partition("#")
                dest = (doc.parent / file_part).resolve() if file_part else doc
                if not dest.exists():
                    broken.append(f"{doc.relative_to(ROOT)}:{n}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{doc.relative_to(ROOT)}:{n}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_doc_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCS[1:] if f"]({p.relative_to(ROOT)})" not in readme]
    assert not missing, f"docs not linked from README.md: {missing}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def _tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## A ten-line tour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith("export ")]


def _example_config(agentd) -> Path:
    """etc/agentd.example.yaml with its state in the test's temp dir, free ports and absolute paths."""
    doc = yaml.safe_load((ROOT / "etc" / "agentd.example.yaml").read_text())
    doc["daemon"].update(run_dir=str(agentd.run_dir), data_dir=str(agentd.data_dir), log_dir=str(agentd.log_dir))
    doc["heartbeat"]["http"]["listen"] = "127.0.0.1:0"
    doc["manager"]["address"] = "127.0.0.1:9"  # nobody: the link stays down, as in the README before the Manager starts
    for agent in doc["agents"]:
        agent["binary_path"] = str((ROOT / "etc" / agent["binary_path"]).resolve())
        agent.setdefault("env", {})["AGENTD_TEST_TAG"] = agentd.tag  # so the fixture finds and kills them
    agentd.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return agentd.config_path


def test_the_ten_line_tour_runs(agentd):
    commands = _tour_commands()
    assert len(commands) >= 8, commands
    config = _example_config(agentd)
    agentd.start()
    agentd.wait_state("http-shipper", "running")
    agentd.wait_state("stubborn", "running")
    env = dict(os.environ, AGENTD_CONFIG=str(config))
    for command in commands:
        assert command.startswith("bin/agentctl "), command
        result = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, f"{command}:\n{result.stderr}"
