"""The reference pages rendered from the code, and ``registry docs``: ``docs/cli.md`` and
``docs/config.md``.

``registry docs cli`` walks the argument parser (:func:`registry.cli.parser.build_parser`):
every command and sub-command, its arguments and options, their choices, defaults and help.
``registry docs config`` renders the JSON Schema of the config file
(:mod:`registry.cli.config_reference`). Both print the page, write it (``--output FILE``) or
compare it with a file (``--check FILE``, exit 1 when it differs), as ``registry schema`` does,
and a test fails when the committed pages are out of date::

    registry docs cli --output docs/cli.md
    registry docs config --output docs/config.md

The pages depend on nothing but the code: argparse's own help formatter is not used (its
layout follows the terminal's width and changes between Python versions).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence

from registry.cli.config_reference import config_reference
from registry.cli.context import Context
from registry.cli.markdown import anchor, code, escape, sentence, table
from registry.cli.output import compare_file, print_or_write

__all__ = ["PAGES", "cli_reference", "cmd_docs", "commands", "own_actions"]

# -- the command line ------------------------------------------------------------------------------

GLOBAL_DESTS = frozenset({"redis_url", "namespace", "json", "scripts"})

_CLI_INTRO = """\
`registry` is installed with the package (`pip install -e .`); `python -m registry` is the
same program. Every command takes `-h`/`--help`. Global options may come before or after the
command: `registry --json models list` and `registry models list --json` are the same.

Where a command reaches Redis: `--redis-url`, else `$REGISTRY_REDIS_URL`, else
`redis://localhost:6379/0` (`redis://`, `rediss://`, `unix://`, `redis+cluster://`,
`rediss+cluster://`). The namespace: `--namespace`, else `$REGISTRY_NAMESPACE`, else
`registry`. How the Lua runs: `--scripts`, else `$REGISTRY_SCRIPTS`, else `eval`.

Exit status: 0 done; 1 Redis unreachable or failing, a model not found, a file that could not
be written, a `--check` that found a difference (or could not read its file), `budget delete`
that found no such budget, a failed check of `demo`'s verdict; 2 a usage error, a bad argument
or a bad input file; 130 interrupted. Every error is one line on stderr, `registry: error:
...`, never a traceback."""


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command under ``parser``, depth first, in the order the parser declares them."""
    sub = _subparsers(parser)
    if sub is None:
        return
    for name, child in sub.choices.items():
        yield (*path, name), child
        yield from commands(child, (*path, name))


def _help_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    sub = _subparsers(parser)
    return {} if sub is None else {a.dest: a.help or "" for a in sub._choices_actions}


def own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's arguments and options, without help, version and the global options."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction)
        and a.dest not in GLOBAL_DESTS
    ]


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _argument(action: argparse.Action) -> str:
    """How one argument is written in a usage line, without the brackets of an optional one."""
    name = max(action.option_strings, key=len) if action.option_strings else ""
    if action.nargs == 0:
        return name
    value = _metavar(action)
    if action.nargs == "+":
        value = f"{value} [{value} ...]"
    elif action.nargs == "*":
        value = f"[{value} ...]"
    elif action.nargs == "?" and action.option_strings:
        value = f"[{value}]"
    return f"{name} {value}" if name else value


def _usage(words: Sequence[str], parser: argparse.ArgumentParser) -> str:
    grouped: dict[int, list[argparse.Action]] = {}
    for group in parser._mutually_exclusive_groups:
        for action in group._group_actions:
            grouped[id(action)] = group._group_actions
    done: set[int] = set()
    options: list[str] = []
    positionals: list[str] = []
    for action in own_actions(parser):
        if id(action) in done:
            continue
        if id(action) in grouped:
            members = grouped[id(action)]
            done.update(id(a) for a in members)
            options.append("[" + " | ".join(_argument(a) for a in members) + "]")
        elif action.option_strings:
            options.append(_argument(action) if action.required else f"[{_argument(action)}]")
        elif action.nargs == "?":
            positionals.append(f"[{_argument(action)}]")
        else:
            positionals.append(_argument(action))
    sub = _subparsers(parser)
    if sub is not None:
        positionals.append(str(sub.metavar or sub.dest.upper()) + " ...")
    return " ".join([*words, *options, *positionals])


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is False or value == argparse.SUPPRESS or action.nargs == 0:
        return ""
    if isinstance(value, list | tuple):
        return code(" ".join(map(str, value)))
    return code(str(value))


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's %(default)s and friends
        text = text % {**vars(action), "prog": "registry"}
    parts = [escape(text)] if text else []
    if action.choices is not None and action.metavar is not None:
        parts.append("one of " + ", ".join(code(str(c)) for c in action.choices))
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        parts.append("repeatable")
    if action.required and action.option_strings:
        parts.append("required")
    return "; ".join(parts)


def _action_rows(actions: Sequence[argparse.Action]) -> tuple[list[list[str]], list[list[str]]]:
    positionals: list[list[str]] = []
    options: list[list[str]] = []
    for action in actions:
        if action.option_strings:
            names = ", ".join(code(s) for s in action.option_strings)
            value = "" if action.nargs == 0 else code(_argument(action).partition(" ")[2])
            options.append([names, value, _default(action), _help(action)])
        else:
            positionals.append([code(_metavar(action)), _help(action)])
    return positionals, options


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The markdown reference of every command of ``parser`` (by default, ``registry``'s)."""
    if parser is None:
        from registry.cli.parser import build_parser

        parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from registry/cli/parser.py by `registry docs cli --output docs/cli.md`."
        " Do not edit: tests/test_docs.py fails when this file is out of date. -->",
        "",
        _CLI_INTRO,
        "",
        "```text",
        f"{parser.prog} [global options] COMMAND ...    {parser.epilog or ''}".rstrip(),
        "```",
        "",
        "## Global options",
        "",
    ]
    root_options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    _, rows = _action_rows(root_options)
    lines += table(["option", "value", "default", "meaning"], rows)
    lines += ["", "## Commands", ""]
    helps = {(): _help_of(parser)}
    every = list(commands(parser))
    for path, child in every:
        helps[path] = _help_of(child)
    rows = [
        [f"[`{' '.join(path)}`](#{anchor(' '.join((parser.prog, *path)))})", escape(helps[path[:-1]][path[-1]])]
        for path, _ in every
    ]
    lines += table(["command", "what it does"], rows)
    for path, child in every:
        title = " ".join((parser.prog, *path))
        lines += ["", f"{'#' * min(len(path) + 1, 4)} {title}", "", sentence(helps[path[:-1]][path[-1]]), ""]
        lines += ["```text", _usage((parser.prog, *path), child), "```"]
        positionals, options = _action_rows(own_actions(child))
        if positionals:
            lines += ["", *table(["argument", "meaning"], positionals)]
        if options:
            lines += ["", *table(["option", "value", "default", "meaning"], options)]
        subcommands = _help_of(child)
        if subcommands:
            rows = [[f"[`{name}`](#{anchor(title + ' ' + name)})", escape(text)] for name, text in subcommands.items()]
            lines += ["", *table(["command", "what it does"], rows)]
    return "\n".join(lines) + "\n"


# -- the command -------------------------------------------------------------------------------------

PAGES: dict[str, tuple[Callable[[], str], str]] = {
    "cli": (cli_reference, "docs/cli.md"),
    "config": (config_reference, "docs/config.md"),
}


def cmd_docs(ctx: Context) -> int:
    """Print a reference page, write it (``--output``) or compare it with a file (``--check``)."""
    args = ctx.args
    render, _ = PAGES[args.page]
    text = render()
    if args.check is not None:
        return compare_file(ctx.out, args.check, text, "is out of date", f"registry docs {args.page}")
    return print_or_write(ctx.out, text, args.output)
