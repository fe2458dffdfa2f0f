"""``registry import litellm FILE`` and ``registry schema``: bringing data in, describing it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.cli.context import Context
from registry.cli.output import compare_file, print_or_write, render_table
from registry.cli.progress import Steps
from registry.errors import ConfigError

if TYPE_CHECKING:
    from registry.importers.litellm import LiteLLMImport

__all__ = ["cmd_import_litellm", "cmd_schema", "import_report"]

_EXAMPLES = 2


def import_report(result: LiteLLMImport) -> list[str]:
    """What was imported, then what was left out: a count per reason, with a few examples.

    The full lists (thousands of keys for the real map) are in the ``--json`` document.
    """
    lines = [f"imported {len(result.models)} models ({len(result.aliases)} aliases)"]
    if result.noisy_prices:
        lines.append(f"{len(result.noisy_prices)} with float noise in a price, imported as written")
    if result.skipped:
        ranked = sorted(result.skipped.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        total = sum(len(keys) for _, keys in ranked)
        lines.append(f"left out {total} entries (--json lists them all):")
        rows = [
            (str(len(keys)), reason, ", ".join(keys[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else ""))
            for reason, keys in ranked
        ]
        lines += [f"  {row}" for row in render_table(("COUNT", "REASON", "FOR EXAMPLE"), rows, right=(0,))]
    return lines


def cmd_import_litellm(ctx: Context) -> int:
    """Import LiteLLM's price map; without ``--replace`` models already registered are kept."""
    from registry.importers.litellm import import_litellm_map

    args = ctx.args
    path = Path(args.file)
    steps = Steps(ctx.out)
    with steps.step(f"converting {path.name}", total=0) as advance:
        result = import_litellm_map(path, progress=advance)  # a bad file raises ConfigError
    with ctx.registry() as reg:
        models = result.models
        kept: list[str] = []
        if not args.replace:
            with steps.step("reading the catalog"):
                present = {m.key for m in reg.list_models()}
            kept = [m.key for m in models if m.key in present]
            models = [m for m in models if m.key not in present]
        verb = "comparing" if args.dry_run else "writing"
        with steps.step(f"{verb} {len(models)} models (one atomic write)"):
            plan = reg.sync_models(models, dry_run=args.dry_run)
    if ctx.out.json:
        document: dict[str, Any] = {
            "file": str(path),
            "dry_run": args.dry_run,
            "replace": args.replace,
            "import": result.summary(),
            "kept": kept,
            "sync": {**plan.summary(), "updated": sorted(m.key for _, m in plan.updated)},
        }
        ctx.out.document(document)
        return 0
    ctx.out.lines(import_report(result))
    add, update = ("would add", "would update") if args.dry_run else ("added", "updated")
    line = f"{add} {len(plan.added)}, {update} {len(plan.updated)}, {len(plan.unchanged)} unchanged"
    if kept:
        line += f", {len(kept)} already registered and kept (--replace overwrites them)"
    written = "nothing written" if args.dry_run or not plan.changed else "written"
    ctx.out.line(f"{line}; {written}, catalog at revision {plan.revision}")
    return 0


def cmd_schema(ctx: Context) -> int:
    """Print the config file's JSON Schema, write it (``--output``) or compare (``--check``)."""
    from registry.schema import render_schema

    args = ctx.args
    text = render_schema()
    if args.check is not None:
        stale = "differs from the schema of this version of registry"
        return compare_file(ctx.out, args.check, text, stale, "registry schema")
    return print_or_write(ctx.out, text, args.output)


def cmd_export(ctx: Context) -> int:
    """Write the catalog and the ledger counters as one JSON document (stdout or ``--output``)."""
    import json

    with ctx.registry() as reg:
        document = reg.export()
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    detail = f"{len(document['catalog'])} models, {len(document['ledger'])} ledger keys"
    return print_or_write(ctx.out, text, ctx.args.output, detail)


def cmd_import_dump(ctx: Context) -> int:
    """Restore an export into the (empty) namespace: the catalog, then every ledger counter."""
    import json

    path = Path(ctx.args.file)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can read
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    with ctx.registry() as reg:
        written = reg.restore(document)
    ctx.out.line(f"restored {len(document.get('catalog', []))} models and {written} ledger keys from {path}")
    return 0
