"""``registry acl`` and ``registry functions``: who may do what, and the code workers call.

``registry acl`` prints the Redis users of the namespace's roles (see :mod:`registry.acl`);
``registry functions load`` loads the function library that ``scripts="functions"`` clients
call (see :mod:`registry.functions`) into every primary, as the admin role; ``registry
functions source`` prints it, for review or ``redis-cli -x FUNCTION LOAD``.
"""

from __future__ import annotations

import os

from registry.acl import ROLES, render, user_name
from registry.cli.context import Context
from registry.cli.output import compare_file, print_or_write

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
        return compare_file(ctx.out, args.check, text, f"differs from `registry acl` of namespace {ctx.namespace!r}")
    users = ", ".join(f"{user_name(ctx.namespace, r)}{'' if passwords[r] else ' (off)'}" for r in ROLES)
    return print_or_write(ctx.out, text, args.output, users)


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

    ctx.out.write(library().source)
    return 0
