"""A config file read as YAML: unreadable files, bad encodings, YAML errors and duplicate keys become
one-line problems with the file's name and the line (docs/agentd.md, "check-config")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from supervisor.config.errors import ConfigError
from supervisor.config.units import describe_value

__all__ = ["read_config_file"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of letting the last one win silently."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            loader.duplicates.append(
                f"line {line}, column {key_node.start_mark.column + 1}: duplicate key "
                f"{describe_value(key)} (first on line {seen[key]})"
            )
        else:
            seen[key] = line
    return (yield from yaml.SafeLoader.construct_yaml_map(loader, node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _read_yaml(text: str, label: str) -> tuple[Any, list[str]]:
    loader = None
    try:
        loader = _Loader(text)
        return loader.get_single_data(), [f"{label}: {d}" for d in loader.duplicates]
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = f"character #x{exc.character:04x} is not allowed in YAML"
        raise ConfigError([f"{label}: line {line}, column {column}: {problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "invalid YAML"
        if exc.context:
            context = exc.context
            if exc.context_mark is not None and exc.context_mark is not mark:
                context += f" on line {exc.context_mark.line + 1}"
            problem = f"{problem} ({context})"
        raise ConfigError([f"{label}: {where}{problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: invalid YAML: {' '.join(str(exc).split())}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_config_file(path: Path) -> tuple[Any, list[str]]:
    """The parsed YAML of a config file and its duplicate-key problems; ConfigError if it cannot be read."""
    label = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{label}: cannot read config: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: cannot read config: it is a directory"]) from None
    except PermissionError:
        raise ConfigError([f"{label}: cannot read config: permission denied"]) from None
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{label}: not valid UTF-8 (bad byte at offset {exc.start})"]) from None
    return _read_yaml(text, label)

