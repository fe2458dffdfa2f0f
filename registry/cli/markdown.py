"""Markdown for the generated reference pages (``registry docs``): table cells, code spans,
headings' anchors. No I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["anchor", "code", "escape", "rst_to_md", "sentence", "table"]

_SPECIAL = re.compile(r"([\\*\[\]<>|])")


def escape(text: str) -> str:
    """``text`` for a markdown table cell: markdown's special characters escaped outside code
    spans, ``|`` escaped inside them too (a table would split the cell there)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        return _SPECIAL.sub(r"\\\1", text).replace("`", "\\`").replace("\n", " ")
    out = []
    for i, part in enumerate(parts):
        out.append(part.replace("|", "\\|") if i % 2 else _SPECIAL.sub(r"\\\1", part))
    return "`".join(out).replace("\n", " ")


def code(text: str) -> str:
    """``text`` as an inline code span, for a table cell."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return lines


def rst_to_md(text: str) -> str:
    """A docstring's ``literal`` (reStructuredText) as `literal` (markdown), paragraphs kept."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p.replace("``", "`") for p in paragraphs if p)


def sentence(text: str) -> str:
    """Help text as a sentence: a capital first letter and a full stop."""
    text = escape(text)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, spaces to '-', punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
