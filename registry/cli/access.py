"""``registry acl`` and ``registry functions``: who may do what, and the code workers call.

``registry acl`` prints the Redis users of the namespace's roles (see :mod:`registry.acl`);
``registry functions load`` loads the function library that ``scripts="functions"`` clients
call (see :mod:`registry.functions`) into every primary, as the admin role; ``registry
functions source`` prints it, for review or ``redis-cli -x FUNCTION LOAD``.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.acl import ROLES, render, user_name
from registry.cli.context import Context

__all__ = ["cmd_acl", "cmd_functions_load", "cmd_functions_source", "password_env"]


def password_env(role: str) -> str:
    """The environment variable ``registry acl`` reads ``role``'s password from."""
    return f"REGISTRY_{role.upper()}_PASSWORD"


def cmd_acl(ctx: Context) -> int:
    """Print the ACL users of the namespace's roles, write them (``--output``) or compare (``--check``)."""
    args = ctx.args
    passwords = {role: getattr(args, f"{role}_password") or os.environ.get(password_env(role)) for role in ROLES}
    text = render(ctx.namespace, passwords, comments=not args.aclfile)  # a bad namespace: ConfigError
    if args.check is not None:
        path = Path(args.check)
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            ctx.out.error(f"{path}: cannot read: {exc.strerror or exc}")
            return 1
        if current != text:
            ctx.out.error(f"{path} differs from `registry acl` of namespace {ctx.namespace!r}; regenerate it")
            return 1
        ctx.out.line(f"{path} is up to date")
        return 0
    if args.output is not None:
        Path(args.output).write_text(text, encoding="utf-8", newline="\n")
        users = ", ".join(f"{user_name(ctx.namespace, r)}{'' if passwords[r] else ' (off)'}" for r in ROLES)
        ctx.out.line(f"wrote {args.output}: {users}")
        return 0
    ctx.out.stdout.write(text)
    ctx.out.stdout.flush()
    return 0


def cmd_functions_load(ctx: Context) -> int:
    """FUNCTION LOAD the library into every primary (the admin role may); print its name."""
    from registry.functions import library

    with ctx.registry() as reg:
        name = reg.load_functions()
    if ctx.out.json:
        ctx.out.document({"library": name, "functions": dict(library().functions)})
    else:
        ctx.out.line(name)
    return 0


def cmd_functions_source(ctx: Context) -> int:
    """Print the library's source, as FUNCTION LOAD takes it."""
    from registry.functions import library

    ctx.out.stdout.write(library().source)
    ctx.out.stdout.flush()
    return 0
