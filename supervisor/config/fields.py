"""The field types every config section is built from: paths, strings, listen addresses, CIDRs (docs/configuration.md).

Each type refuses a bad value with a sentence a person can act on; errors.py turns it into one line.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from supervisor.config.units import Duration, describe_value

__all__ = [
    "KIB",
    "MIB",
    "Cidr",
    "IPAddress",
    "Listen",
    "Lower",
    "PathT",
    "PositiveDuration",
    "Section",
    "Str",
    "is_loopback",
    "split_listen",
]

KIB, MIB = 1024, 1024 * 1024


def _to_path(value: Any) -> Any:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {describe_value(value)}")
    # Path("") is ".", which would silently mean "the config directory".
    if not value.strip():
        raise ValueError("must not be empty")
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    return Path(value)


def _to_str(value: Any) -> Any:
    # YAML turns `PORT: 8080` and `DEBUG: yes` into int/bool; accept them where a string is meant.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # 1.10 would become "1.1": refuse rather than change the value behind the user's back.
        raise ValueError(f"expected a string, got {describe_value(value)} (put it in quotes)")
    return value


def _lower(value: Any) -> Any:
    # `log_level: INFO` and `policy: " Always "` mean what they say; a non-string is left for the type to refuse.
    return value.strip().lower() if isinstance(value, str) else value


def split_listen(listen: str) -> tuple[str, int]:
    """Split a validated "host:port" (IPv6 as "[::1]:80") into host (without brackets) and port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _check_listen(value: Any) -> Any:
    expected = f"expected host:port (e.g. 127.0.0.1:8084), got {describe_value(value)}"
    if not isinstance(value, str):
        raise ValueError(expected)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(expected)
    if not host:
        raise ValueError(f"host is missing in {value!r} (use 0.0.0.0:{port} to listen on all interfaces)")
    if host.startswith("[") or host.endswith("]"):
        bracketed = host.startswith("[") and host.endswith("]")
        try:
            ipaddress.IPv6Address(host[1:-1] if bracketed else "")
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {value!r}") from None
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets, e.g. [::1]:{port}; got {value!r}")
    if int(port) > 65535:
        raise ValueError(f"port must be 0..65535, got {int(port)}")
    return value


def is_loopback(host: str) -> bool:
    """True for "localhost" and any loopback address (127.0.0.0/8, ::1, ::ffff:127.x, a zone id ignored): a config
    listen address that only this machine reaches, or a peer address whose client end is a socket of this machine."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _check_cidr(value: Any) -> Any:
    # A bare address is that one host; host bits set (10.0.0.5/8) are refused rather than silently widened.
    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR like 10.0.0.5/32, got {describe_value(value)}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None


def _check_ip(value: Any) -> Any:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"expected an IP address, got {describe_value(value)}") from None


PathT = Annotated[Path, BeforeValidator(_to_path)]
Cidr = Annotated[str, BeforeValidator(_check_cidr)]
IPAddress = Annotated[str, BeforeValidator(_check_ip)]
Str = Annotated[str, BeforeValidator(_to_str)]
Listen = Annotated[str, BeforeValidator(_check_listen)]
PositiveDuration = Annotated[Duration, Field(gt=0)]
# Applied before the field's own type: Lower[Literal["text", "json"]] takes " JSON ".
Lower = BeforeValidator(_lower)


class Section(BaseModel):
    """A config section: unknown keys are errors, defaults are validated, and an empty section means defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        # `daemon:` with nothing under it parses as null; it means "all defaults".
        return {} if data is None else data
