"""Plain-text tables for agentctl: left-aligned columns, no dependencies, nothing clever."""

from __future__ import annotations

from typing import Sequence


def printable(text: str, keep: str = "\n") -> str:
    """`text` with every character a terminal could act on (controls, escapes, bidi overrides, lone
    surrogates) shown as its Python escape, e.g. '\\x1b'; characters in `keep` stay as they are.

    Agent-reported fields reach agentctl's output; raw, an escape sequence in a forged `version` would
    drive the operator's terminal (issue 8)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else ascii(ch)[1:-1] for ch in text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]], max_last: int | None = None) -> str:
    """Columns padded to the widest cell; `None` prints as '-'; the last column is not padded."""
    cells = [[("-" if c is None else printable(str(c), keep="")) for c in row] for row in rows]
    if max_last:
        for row in cells:
            if row and len(row[-1]) > max_last:
                row[-1] = row[-1][: max_last - 1] + "…"
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = []
    for row in [list(headers), *cells]:
        padded = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)
