"""MkDocs hook: the configuration reference, generated from `mp_rl.config` so it cannot drift.

`docs/configuration.md` holds the marker `<!-- config-reference -->`; at build time it becomes one
table per section of `Config`: each field's key, type and bounds, default and `description`. Importing
`mp_rl.config` needs only pydantic and PyYAML.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path

import annotated_types as at
from mkdocs.exceptions import PluginError
from mkdocs.structure.pages import Page

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, installed or not
from mp_rl.config import Config

MARKER = "<!-- config-reference -->"
_BOUNDS = {at.Ge: ("≥", "ge"), at.Gt: (">", "gt"), at.Le: ("≤", "le"), at.Lt: ("<", "lt"),
           at.MinLen: ("length ≥", "min_length"), at.MaxLen: ("length ≤", "max_length")}  # fmt: skip
_ESCAPE = str.maketrans({"|": "&#124;", "<": "&lt;", ">": "&gt;", "*": r"\*"})  # safe in a table cell


def _bounds(metadata: Iterable[object]) -> str:
    """Pydantic's constraints as `1 … 64`, `> 0` or `length ≤ 8` (patterns left out)."""
    found: dict[str, str] = {}
    for m in metadata:
        for kind, (sign, attr) in _BOUNDS.items():
            if isinstance(m, kind):
                v = getattr(m, attr)
                found[sign] = f"{v:,}" if isinstance(v, int) else f"{v:g}"
    for low, high, name in (("≥", "≤", ""), ("length ≥", "length ≤", "length")):  # closed ranges read as one
        if low in found and high in found:
            found[name] = f"{found.pop(low)} … {found.pop(high)}"
    return ", ".join(f"{sign} {v}".strip() for sign, v in found.items())


def _type(tp: object) -> str:
    """A type annotation in YAML's words: `int or 'auto'`, `list of int (≥ 1)`, `'dqn' or 'qr_dqn'`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        bounds = _bounds(m for f in args[1:] for m in getattr(f, "metadata", [f]))
        return f"{_type(args[0])} ({bounds})" if bounds else _type(args[0])
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is tuple:
        return f"list of {_type(args[0])}" + ("" if args[-1] is Ellipsis else f", {len(args)} items")
    if origin is dict:
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def reference() -> str:
    """One Markdown table per config section, in the order `Config` declares them."""
    out = []
    for section, sfield in Config.model_fields.items():
        out += [f"### `{section}`", "", "| key | type | default | what |", "| --- | --- | --- | --- |"]
        for name, f in sfield.annotation.model_fields.items():
            default = f.get_default(call_default_factory=True)
            default = default if isinstance(default, str) else json.dumps(default)
            kind = ", ".join(filter(None, [_type(f.annotation), _bounds(f.metadata)]))
            cells = [kind, f"`{default}`", f.description or ""]
            out.append(f"| `{section}.{name}` | " + " | ".join(c.translate(_ESCAPE) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Page, **_: object) -> str:
    """Replace the marker in `configuration.md` with the generated tables."""
    if page.file.src_uri != "configuration.md":
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"configuration.md has lost its {MARKER} marker")
    return markdown.replace(MARKER, reference())
