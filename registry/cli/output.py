"""How the command line shows things: aligned tables for people, JSON documents for scripts,
and generated files (printed or written to ``--output``, :func:`print_or_write`; compared with
``--check``, :func:`compare_file`).

Money is never a float here: a :class:`~decimal.Decimal` is printed in plain positional
notation (``0.00000045``, not ``4.5E-7``) and goes into JSON as that string.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from registry.models import ModelSpec, RateLimit

__all__ = [
    "Output",
    "amount",
    "compare_file",
    "cost_text",
    "model_details",
    "model_table",
    "print_or_write",
    "render_table",
    "to_json",
    "token_limits",
]

_PER = {1: "1", 1000: "1K", 1_000_000: "1M"}


def amount(value: Decimal) -> str:
    """A Decimal as exact positional text: ``Decimal('4.5E-7')`` -> ``'0.00000045'``."""
    return format(value, "f")


def cost_text(value: Decimal) -> str:
    """A computed cost, exact and without trailing zeros: ``Decimal('0.004500')`` -> ``'0.0045'``.

    Done on the text, not with ``Decimal.normalize()``, which rounds to the context's precision.
    """
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return amount(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(document: Any, *, compact: bool = False) -> str:
    """``document`` as JSON text, any Decimal in it as an exact string (never a float)."""
    if compact:
        return json.dumps(document, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(document, default=_json_default, ensure_ascii=False, indent=2)


@dataclass
class Output:
    """Where a command writes: people's text or JSON on stdout, errors on stderr."""

    json: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def line(self, text: str = "") -> None:
        print(_printable(text), file=self.stdout, flush=True)

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    def write(self, text: str) -> None:
        """``text`` on stdout as it is (a generated file: no newline added, nothing escaped)."""
        self.stdout.write(text)
        self.stdout.flush()

    def document(self, document: Any, *, compact: bool = False) -> None:
        """One JSON document (``compact``: on one line, for a stream of them)."""
        self.line(to_json(document, compact=compact))

    def error(self, message: str) -> None:
        """``registry: error: message`` on stderr (a multi-line message keeps its lines)."""
        print(_printable(f"registry: error: {message}"), file=self.stderr, flush=True)


def _printable(text: str) -> str:
    """``text`` with each lone surrogate (what Python makes of argv or file-name bytes that are
    not UTF-8) written as an escape, ``\\udcff``: no stream can encode one."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def compare_file(out: Output, check: str, text: str, stale: str, command: str | None = None) -> int:
    """``--check FILE``: exit status 0 if the file ``check`` holds ``text``; else 1, with an error
    that it cannot be read or ``FILE <stale>; regenerate it`` (``with: <command> --output FILE``
    after it, if ``command`` is given)."""
    path = Path(check)
    try:
        current = path.read_text(encoding="utf-8", errors="replace")  # not UTF-8: it differs
    except OSError as exc:
        out.error(f"{path}: cannot read: {exc.strerror or exc}")
        return 1
    if current != text:
        how = f" with: {command} --output {path}" if command else ""
        out.error(f"{path} {stale}; regenerate it{how}")
        return 1
    out.line(f"{path} is up to date")
    return 0


def print_or_write(out: Output, text: str, output: str | None, detail: str = "") -> int:
    """A generated file's ``text`` on stdout, or written to ``--output FILE`` (then ``wrote
    FILE``, and ``: detail`` if given). Returns the exit status, 0."""
    if output is None:
        out.write(text)
        return 0
    Path(output).write_text(text, encoding="utf-8", newline="\n")
    out.line(f"wrote {output}: {detail}" if detail else f"wrote {output}")
    return 0


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> list[str]:
    """Plain-text columns, two spaces apart; the columns in ``right`` are right-aligned."""
    rows = [list(map(str, row)) for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    right = set(right)

    def fmt(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    return [fmt(headers), *(fmt(row) for row in rows)]


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,} tokens"


def _per(per: int) -> str:
    return _PER.get(per, str(per))


def model_table(models: Sequence[ModelSpec]) -> list[str]:
    """The catalog table: key, status, context, prices (per, currency) and rate limits."""
    if not models:
        return ["(no models)"]
    headers = ("KEY", "STATUS", "CONTEXT", "INPUT", "OUTPUT", "PER", "CUR", "RPM", "TPM", "RPD")
    rows = [
        (
            m.key,
            m.status.value,
            _count(m.context_window),
            amount(m.cost.input),
            amount(m.cost.output),
            _per(m.cost.per),
            m.cost.currency,
            _count(m.rate_limit.requests_per_minute),
            token_limits(m.rate_limit),
            _count(m.rate_limit.requests_per_day),
        )
        for m in models
    ]
    return render_table(headers, rows, right=(2, 3, 4, 5, 7, 8, 9))


def token_limits(limit: RateLimit) -> str:
    """A rate limit's tokens per minute, in a few characters: ``31,000`` (input plus output), or
    ``30,000 in, 8,000 out`` where input and output are limited apart; ``-`` for none."""
    parts = [
        f"{value:,}{suffix}"
        for value, suffix in (
            (limit.tokens_per_minute, ""),
            (limit.input_tokens_per_minute, " in"),
            (limit.output_tokens_per_minute, " out"),
        )
        if value is not None
    ]
    return ", ".join(parts) or "-"


def _limits(limit: RateLimit) -> str:
    return (
        f"{_count(limit.requests_per_minute)} requests/min, "
        f"{token_limits(limit)} tokens/min, "
        f"{_count(limit.requests_per_day)} requests/day"
    )


def model_details(model: ModelSpec, *, revision: int | None = None) -> list[str]:
    """``models show``: every field of one model, one per line."""
    cost = model.cost
    per = f"{cost.currency} per {_per(cost.per)} tokens"
    rows: list[tuple[str, str]] = [
        ("name", model.name),
        ("version", model.version),
        ("status", model.status.value),
        ("capabilities", ", ".join(model.capabilities) or "-"),
        ("tags", ", ".join(model.tags) or "-"),
        ("context window", _tokens(model.context_window)),
        ("max output", _tokens(model.max_output_tokens)),
        ("price", f"input {amount(cost.input)}, output {amount(cost.output)} {per}"),
        ("cached input", "-" if cost.cached_input is None else amount(cost.cached_input)),
        ("cache write", "-" if cost.cache_write is None else amount(cost.cache_write)),
    ]
    for tier in cost.tiers:
        edge = "from" if tier.inclusive else "above"
        rows.append(
            (
                "tier",
                f"{edge} {tier.threshold:,} prompt tokens: input {amount(tier.input)}, output {amount(tier.output)}",
            )
        )
    if cost.note:
        rows.append(("price note", cost.note))
    rows.append(("rate limit", _limits(model.rate_limit)))
    if model.rate_limit.note:
        rows.append(("limit note", model.rate_limit.note))
    if model.metadata:
        rows.append(("metadata", to_json(model.metadata, compact=True)))
    if revision is not None:
        rows.append(("revision", str(revision)))
    width = max(len(name) for name, _ in rows)
    return [model.key, *(f"  {name.ljust(width)}  {value}" for name, value in rows)]
