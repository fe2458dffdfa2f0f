"""The documentation's examples run, and the generated pages are current.

Pages: ``README.md`` and every ``docs/*.md``. In each page:

- every fenced ``python`` block runs against the test Redis, in the page's order, in one
  namespace per page (a notebook: a later block sees what an earlier one defined, and Redis
  keeps what it wrote). The working directory is the repository's root, ``REDIS_URL`` and
  ``REGISTRY_REDIS_URL`` hold the test Redis' URL, and the literal ``"redis://localhost:6379/0"``
  in a block is replaced by that URL. A traceback names the page and its line.
- a ``py`` block is shown, not run (it needs a cluster, TLS or a real provider): it must compile.
  Other blocks (``text``, ``console``, ``json``...) are not Python.
- every ``registry ...`` (or ``python -m registry ...``) command in a ``sh``, ``bash``,
  ``shell`` or ``console`` block (``console``: the lines after a ``$`` prompt) must parse with
  the CLI's own parser, so a renamed command or option fails here.

A page whose examples need more than Redis (a fake provider, a server) gets a setup in
:data:`SETUPS`: a context manager around the run of its blocks, which may set environment
variables, start and stop processes, put names in the page's namespace and add a hook that
runs before each block.

``docs/cli.md`` and ``docs/config.md`` are generated (``registry docs cli|config --output
...``, :mod:`registry.cli.reference`); a test fails when they differ from what the code renders.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from registry import Registry
from registry.cli import config_reference, main, markdown, reference
from registry.cli.parser import build_parser
from registry.fake_provider import FakeProvider
from registry.schema import catalog_schema
from tests.conftest import ROOT

PLACEHOLDER_URL = "redis://localhost:6379/0"
SHELL = frozenset({"sh", "bash", "shell", "console", "zsh"})


# -- reading the pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page, the line of its first line of code, its language."""

    page: str
    line: int
    lang: str
    code: str


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


def read_blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page`` (a path from the repository's root), in order."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        info = match["info"].strip()
        lang = info.split()[0].lower() if info else ""
        body, j = [], i + 1
        while j < len(lines):
            closing = lines[j].strip()
            if closing.startswith(fence) and set(closing) == {fence[0]}:
                break
            text = lines[j]
            body.append(text[min(indent, len(text) - len(text.lstrip())) :])
            j += 1
        out.append(Block(page, i + 2, lang, "\n".join(body) + "\n"))
        i = j + 1
    return out


def pages() -> list[str]:
    return ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def blocks_of(lang: str | frozenset[str]) -> list[tuple[str, list[Block]]]:
    langs = frozenset({lang}) if isinstance(lang, str) else lang
    found = [(page, [b for b in read_blocks(page) if b.lang in langs]) for page in pages()]
    return [(page, blocks) for page, blocks in found if blocks]


# -- running a page --------------------------------------------------------------------------------


@dataclass
class PageRun:
    """What a page's setup may use and change."""

    page: str
    redis_url: str
    env: pytest.MonkeyPatch
    namespace: dict[str, Any]
    before_block: list[Callable[[Block], None]] = field(default_factory=list)


Setup = Callable[[PageRun], AbstractContextManager[None]]


@contextlib.contextmanager
def _fake_provider(run: PageRun) -> Iterator[None]:
    """README.md and docs/integrations.md: their OpenAI and Anthropic examples call the fake
    provider (:mod:`registry.fake_provider`), through ``OPENAI_BASE_URL`` and ``ANTHROPIC_BASE_URL``."""
    with FakeProvider() as fake:
        run.env.setenv("OPENAI_BASE_URL", fake.openai_url)
        run.env.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url)
        run.env.setenv("OPENAI_API_KEY", "sk-fake")
        run.env.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
        yield


# Per page (path from the repository's root): what its blocks need besides the test Redis.
SETUPS: dict[str, Setup] = {
    "README.md": _fake_provider,
    "docs/integrations.md": _fake_provider,
}


@contextlib.contextmanager
def _clients_closed(env: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every blocking client the page made and left open (its threads would outlive the
    test), whatever name it had: a later block may have bound the name to another client."""
    made: list[Registry] = []
    init = Registry.__init__

    def recording_init(self: Registry, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    env.setattr(Registry, "__init__", recording_init)
    try:
        yield
    finally:
        for client in made:
            with contextlib.suppress(Exception):
                client.close()


PYTHON_PAGES = blocks_of("python")


def test_the_readme_and_the_docs_have_examples() -> None:
    runnable = dict(PYTHON_PAGES)
    assert len(runnable.get("README.md", [])) >= 5
    for page in ("docs/quickstart.md", "docs/concepts.md", "docs/api.md", "docs/migration.md"):
        assert runnable.get(page), f"{page} has no python example"


@pytest.mark.parametrize(("page", "blocks"), PYTHON_PAGES, ids=[page for page, _ in PYTHON_PAGES])
def test_page_examples_run(page: str, blocks: list[Block], redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples name config/models.json
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REGISTRY_REDIS_URL", redis_url)
    monkeypatch.delenv("REGISTRY_NAMESPACE", raising=False)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    run = PageRun(page, redis_url, monkeypatch, namespace)
    setup = SETUPS.get(page, lambda _run: contextlib.nullcontext())
    with _clients_closed(monkeypatch), setup(run):
        for block in blocks:
            for hook in run.before_block:
                hook(block)
            source = block.code.replace(f'"{PLACEHOLDER_URL}"', repr(redis_url))
            source = source.replace(f"'{PLACEHOLDER_URL}'", repr(redis_url))
            # Padded so that a traceback's line numbers are the page's own.
            code = compile("\n" * (block.line - 1) + source, str(ROOT / page), "exec")
            exec(code, namespace)


PY_PAGES = blocks_of("py")


@pytest.mark.parametrize(("page", "blocks"), PY_PAGES, ids=[page for page, _ in PY_PAGES])
def test_shown_python_compiles(page: str, blocks: list[Block]) -> None:
    for block in blocks:
        compile("\n" * (block.line - 1) + block.code, str(ROOT / page), "exec")


# -- CLI examples ----------------------------------------------------------------------------------

_OPERATORS = frozenset({"|", "||", "&&", ";", "&"})


def shell_commands(block: Block) -> list[list[str]]:
    """The ``registry`` invocations of a shell block, as argv lists (without ``registry``)."""
    lines = block.code.splitlines()
    if block.lang == "console":
        lines = [line.lstrip()[2:] for line in lines if line.lstrip().startswith("$ ")]
    text = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        segment: list[str] = []
        for word in [*words, ";"]:
            if word not in _OPERATORS:
                segment.append(word)
                continue
            while segment and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[0]):  # VAR=value before it
                segment.pop(0)
            program = os.path.basename(segment[0]) if segment else ""
            if program == "registry":
                found.append(segment[1:])
            elif program.startswith("python") and segment[1:3] == ["-m", "registry"]:
                found.append(segment[3:])
            segment = []
    return found


def parse_error(argv: list[str]) -> str | None:
    """What the CLI's parser says of ``argv`` (None: it parses, or it is ``--help``)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return stderr.getvalue().strip().splitlines()[-1]
    return None


SHELL_PAGES = blocks_of(SHELL)


def test_the_cli_check_finds_bad_commands() -> None:
    block = Block(
        "x.md",
        1,
        "sh",
        "registry models list | head -3  # a comment\nFOO=1 registry usage --today && python -m registry top --once\n"
        "registry budget set acme \\\n  250 --period year\n",
    )
    commands = shell_commands(block)
    assert commands == [
        ["models", "list"],
        ["usage", "--today"],
        ["top", "--once"],
        ["budget", "set", "acme", "250", "--period", "year"],
    ]
    assert [parse_error(argv) is None for argv in commands] == [True, False, True, False]
    console = Block("x.md", 1, "console", "$ registry --version\nregistry 0.1.0\n$ registry models show\n")
    assert shell_commands(console) == [["--version"], ["models", "show"]]
    assert parse_error(["--version"]) is None
    assert "KEY" in (parse_error(["models", "show"]) or "")


@pytest.mark.parametrize(("page", "blocks"), SHELL_PAGES, ids=[page for page, _ in SHELL_PAGES])
def test_cli_examples_parse(page: str, blocks: list[Block]) -> None:
    problems = [
        f"{page}:{block.line}: registry {shlex.join(argv)}: {error}"
        for block in blocks
        for argv in shell_commands(block)
        if (error := parse_error(argv)) is not None
    ]
    assert not problems, "\n".join(problems)


# -- links ----------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)


def _prose(page: str) -> str:
    """The page without its fenced blocks (a link or heading in a code block is neither)."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    for block in read_blocks(page):
        first, last = block.line - 2, block.line - 1 + block.code.count("\n")  # the fences included
        lines[first : last + 1] = [""] * (last + 1 - first)
    return "\n".join(lines)


def _anchors(page: str) -> set[str]:
    return {markdown.anchor(title.replace("`", "")) for title in _HEADING.findall(_prose(page))}


@pytest.mark.parametrize("page", pages())
def test_links_lead_somewhere(page: str) -> None:
    """Every relative link of the page names a file that exists and, after ``#``, a heading in it."""
    broken = []
    for target in _LINK.findall(_prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = (ROOT / page).parent / path if path else ROOT / page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in _anchors(str(where.resolve().relative_to(ROOT))):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page}: " + "; ".join(broken)


# -- generated pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_generated_page_is_current(name: str) -> None:
    render, where = reference.PAGES[name]
    path = ROOT / where
    regenerate = f"run `registry docs {name} --output {where}`"
    assert path.exists(), f"{where} is missing: {regenerate}"
    assert path.read_text(encoding="utf-8") == render(), f"{where} is out of date: {regenerate}"


def test_docs_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("docs", "cli") == (0, reference.cli_reference(), "")
    target = tmp_path / "config.md"
    assert run("docs", "config", "--output", str(target)) == (0, f"wrote {target}\n", "")
    assert target.read_text(encoding="utf-8") == config_reference.config_reference()
    assert run("docs", "config", "--check", str(target)) == (0, f"{target} is up to date\n", "")
    target.write_text("stale\n", encoding="utf-8")
    code, out, err = run("docs", "config", "--check", str(target))
    assert (code, out) == (1, "")
    expected = f"{target} is out of date; regenerate it with: registry docs config --output {target}"
    assert err == f"registry: error: {expected}\n"
    code, _, err = run("docs", "cli", "--check", str(tmp_path / "absent.md"))
    assert code == 1
    assert err.startswith("registry: error: ")
    assert "cannot read" in err
    assert run("docs", "cli", "--check", str(target), "--output", str(target))[0] == 2
    assert run("docs", "manual")[0] == 2


def test_cli_reference_covers_every_command_and_option() -> None:
    text = reference.cli_reference()
    parser = build_parser()
    for path, child in reference.commands(parser):
        assert f" registry {' '.join(path)}\n" in text
        for action in reference.own_actions(child):
            for option in action.option_strings:
                assert f"`{option}`" in text
    for option in ("--redis-url", "--namespace", "--json", "--scripts", "--version"):
        assert f"| `{option}` |" in text


def test_config_reference_covers_every_field_and_notes_only_fill_gaps() -> None:
    schema = catalog_schema()
    text = config_reference.config_reference(schema)
    objects = {"CatalogFile": schema, **schema["$defs"]}
    for name, node in objects.items():
        for field_name in node.get("properties", {}):
            assert f"| `{field_name}` |" in text, f"{name}.{field_name}"
    for key in config_reference.FIELD_NOTES:
        definition, _, field_name = key.partition(".")
        node = objects[definition]["properties"][field_name]
        assert "description" not in node, f"{key}: the schema describes it now; remove the note"
    for name in schema["$defs"]:
        assert f"\n## {name}\n" in text


def test_cli_reference_of_another_parser() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="tool", epilog="Try: tool run")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run *things* | fast")
    run.add_argument("files", nargs="*", metavar="FILE")
    run.add_argument("--tag", nargs="*", help="tags, default %(default)s", default=["a", "b"])
    run.add_argument("--level", nargs="?", const=1, type=int, help="how loud")
    run.add_argument("--mode", choices=("x", "y"), metavar="M", required=True)
    run.add_argument("--name", action="append", help="names")
    text = reference.cli_reference(parser)
    assert "tool run [--tag [TAG ...]] [--level [LEVEL]] --mode M [--name NAME] [FILE ...]" in text
    assert "| `--tag` | `[TAG ...]` | `a b` | tags, default \\['a', 'b'\\] |" in text
    assert "| `--mode` | `M` |   | one of `x`, `y`; required |" in text
    assert "| `--name` | `NAME` |   | names; repeatable |" in text
    assert "Run \\*things\\* \\| fast." in text
    assert markdown.escape("a ` b <c>") == "a \\` b \\<c\\>"
    assert markdown.code("a`b") == "``a`b``"


def test_config_reference_of_another_schema() -> None:
    schema = {
        "description": "A file.",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "required": ["items"],
        "$defs": {
            "Item": {
                "description": "One ``item``.",
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "description": "Bytes."},
                    "cap": {"type": "number", "maximum": 5},
                    "label": {"type": "string", "maxLength": 9},
                    "kind": {"enum": ["a", "b"]},
                    "extra": {},
                    "price": {"anyOf": [{"type": "number", "description": "Inner."}, {"type": "null"}]},
                },
            },
            "Other": {"description": "Not an object."},
            "Bare": {"type": "object"},
        },
    }
    text = config_reference.config_reference(schema)
    assert "| `size` | integer |   |   | at least 1 | Bytes. |" in text
    assert "| `cap` | number |   |   | at most 5 |   |" in text
    assert "| `label` | string |   |   | at most 9 characters |   |" in text
    assert '| `kind` | enum |   |   | one of `"a"`, `"b"` |   |' in text
    assert "| `extra` | any JSON value |" in text
    assert "One `item`." in text
    assert "| `price` | number or null |   |   |   | Inner. |" in text
    assert "## Other\n\nNot an object.\n" in text
    assert "## Bare\n" in text


@pytest.mark.usefixtures("real_redis")  # MEMORY USAGE
def test_the_sizing_script_of_operations_md_runs(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import sizing

    sizing.main(["--redis-url", redis_url, "--quick"])
    out = capsys.readouterr().out
    assert "| `{ns:adm:<model>}:l:m:<n>` |" in out
    assert "| one model's ledger, steady traffic (" in out
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match="{sizing:*")) == []  # it cleans up after itself
    client.close()
