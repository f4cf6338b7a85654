"""`kvraft user|role|auth` and the credentials of the `--user USER[:PASSWORD]` of every
client command (SPEC §8, docs/cli.md), with etcdctl's argument shapes and messages.

kvraft/cli.py calls `register(cli, cli_module)` (the commands use its connection and
errors: this module imports nothing of kvraft.cli, so the two do not import each other)
and `credentials()` in its `_connect`. A `--user` without a password asks for it on the
terminal (not echoed), as etcdctl does. The flag itself, before or after the command,
is kvraft/cli_connection.py's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import click

from kvraft.cli_connection import command_options, user_text
from kvraft.cli_format import escape_bytes
from kvraft.client import prefix_end
from kvraft.client_auth import PERMISSIONS, parse_user


def credentials() -> tuple[str | None, str | None]:
    """(user, password) of the running command's --user (the password asked for when
    not given); (None, None) without one. ValueError for a malformed --user."""
    text = user_text()
    if not text:
        return None, None
    try:
        user, password = parse_user(text)
    except ValueError as e:
        raise ValueError(f"--user: {e}") from None
    if password is None:
        password = click.prompt("Password", hide_input=True, err=True)
    return user, password


def _describe_range(key: bytes, range_end: bytes) -> str:
    if not range_end:
        return escape_bytes(key)
    if range_end == b"\x00":
        return f"[{escape_bytes(key)}, <open ended>"
    text = f"[{escape_bytes(key)}, {escape_bytes(range_end)})"
    if range_end == prefix_end(key):
        text += f" (prefix {escape_bytes(key)})"
    return text


def _key_range(fn: Callable[..., Any]) -> Callable[..., Any]:
    """etcdctl's KEY [RANGE_END] [--prefix] [--from-key] of a role's permission."""
    for decorator in reversed((
        click.argument("key"),
        click.argument("range_end", required=False),
        click.option("--prefix", is_flag=True, help="Every key starting with KEY."),
        click.option("--from-key", is_flag=True, help="Every key from KEY on."),
    )):
        fn = decorator(fn)
    return fn


def register(cli: click.Group, base: ModuleType) -> None:
    """Add `kvraft user`, `kvraft role` and `kvraft auth` to `cli` (kvraft.cli's group);
    `base` is the kvraft.cli module."""
    _connect, _key_bytes = base._connect, base._key_bytes
    CliError, EXIT_OK, EXIT_USAGE = base.CliError, base.EXIT_OK, base.EXIT_USAGE

    def one_call(group: click.Group, name: str, summary: str, arguments: Sequence[str],
                 call: Callable[..., Any], lines: Callable[..., list[str]]) -> None:
        """Add to `group` the command `name ARGUMENTS...` (each a plain string) that makes
        one Auth call, `call(kv.auth, *values)`, and prints `lines(result, *values)`."""
        def command(endpoints: list[str], timeout: float, **given: str) -> int:
            values = [given[a] for a in arguments]
            with _connect(endpoints, timeout) as kv:
                result = call(kv.auth, *values)
            for line in lines(result, *values):
                click.echo(line)
            return EXIT_OK
        for argument in reversed(arguments):
            command = click.argument(argument)(command)
        group.command(name, help=summary)(command_options(command))

    # --- kvraft user ----------------------------------------------------------------------------
    @cli.group()
    def user() -> None:
        """Users of etcd's authentication (add, delete, list, get, grant-role, ...)."""

    @user.command("add")
    @click.argument("name", metavar="NAME[:PASSWORD]")
    @click.option("--new-user-password", default=None, help="The password (else asked for).")
    @click.option("--no-password", is_flag=True,
                  help="A user without a password (authenticates by client certificate only).")
    @command_options
    def user_add(name: str, new_user_password: str | None, no_password: bool,
                 endpoints: list[str], timeout: float) -> int:
        """Add a user."""
        name, sep, password = name.partition(":")
        if not sep:
            password = new_user_password or ""
            if not no_password and new_user_password is None:
                password = click.prompt(f"Password of {name}", hide_input=True,
                                        confirmation_prompt=True, err=True)
        with _connect(endpoints, timeout) as kv:
            kv.auth.user_add(name, password, no_password=no_password)
        click.echo(f"User {name} created")
        return EXIT_OK

    one_call(user, "delete", "Delete a user.", ["name"],
             lambda auth, name: auth.user_delete(name),
             lambda _, name: [f"User {name} deleted"])
    one_call(user, "list", "Every user's name, one a line.", [],
             lambda auth: auth.user_list(), lambda names: list(names))
    one_call(user, "get", "A user and its roles.", ["name"],
             lambda auth, name: auth.user_get(name),
             lambda roles, name: [f"User: {name}", "Roles: " + " ".join(roles)])
    one_call(user, "grant-role", "Grant ROLE to the user NAME.", ["name", "role"],
             lambda auth, name, role: auth.user_grant_role(name, role),
             lambda _, name, role: [f"Role {role} is granted to user {name}"])
    one_call(user, "revoke-role", "Revoke ROLE from the user NAME.", ["name", "role"],
             lambda auth, name, role: auth.user_revoke_role(name, role),
             lambda _, name, role: [f"Role {role} is revoked from user {name}"])

    @user.command("passwd")
    @click.argument("name")
    @click.option("--new-password", default=None, help="The new password (else asked for).")
    @command_options
    def user_passwd(name: str, new_password: str | None, endpoints: list[str],
                    timeout: float) -> int:
        """Change a user's password (root, or the user itself)."""
        if new_password is None:
            new_password = click.prompt(f"New password of {name}", hide_input=True,
                                        confirmation_prompt=True, err=True)
        with _connect(endpoints, timeout) as kv:
            kv.auth.user_change_password(name, new_password)
        click.echo("Password updated")
        return EXIT_OK

    # --- kvraft role ----------------------------------------------------------------------------
    @cli.group()
    def role() -> None:
        """Roles and their key permissions (add, delete, list, get, grant-permission, ...)."""

    one_call(role, "add", "Add a role.", ["name"],
             lambda auth, name: auth.role_add(name),
             lambda _, name: [f"Role {name} created"])
    one_call(role, "delete", "Delete a role (and revoke it from every user).", ["name"],
             lambda auth, name: auth.role_delete(name),
             lambda _, name: [f"Role {name} deleted"])
    one_call(role, "list", "Every role's name, one a line.", [],
             lambda auth: auth.role_list(), lambda names: list(names))

    @role.command("get")
    @click.argument("name")
    @command_options
    def role_get(name: str, endpoints: list[str], timeout: float) -> int:
        """A role and its permissions."""
        with _connect(endpoints, timeout) as kv:
            perms = kv.auth.role_get(name)
        click.echo(f"Role {name}")
        for title, kinds in (("KV Read:", ("READ", "READWRITE")),
                             ("KV Write:", ("WRITE", "READWRITE"))):
            click.echo(title)
            for p in perms:
                if p.kind in kinds:
                    click.echo("\t" + _describe_range(p.key, p.range_end))
        return EXIT_OK

    def _range_end(key: bytes, range_end: str | None, prefix: bool, from_key: bool) -> bytes:
        """etcdctl's: RANGE_END, or --prefix (every key starting with KEY), or --from-key."""
        if sum((range_end is not None, prefix, from_key)) > 1:
            raise CliError("give at most one of RANGE_END, --prefix and --from-key", EXIT_USAGE)
        if prefix:
            return prefix_end(key) or b"\x00"
        if from_key:
            return b"\x00"
        return _key_bytes(range_end) if range_end is not None else b""

    @role.command("grant-permission")
    @click.argument("name")
    @click.argument("permission", type=click.Choice(sorted(PERMISSIONS), case_sensitive=False))
    @_key_range
    @command_options
    def role_grant_permission(name: str, permission: str, key: str, range_end: str | None,
                              prefix: bool, from_key: bool, endpoints: list[str],
                              timeout: float) -> int:
        """Grant read, write or readwrite on KEY, [KEY, RANGE_END) or a prefix."""
        raw = _key_bytes(key)
        end = _range_end(raw, range_end, prefix, from_key)
        with _connect(endpoints, timeout) as kv:
            kv.auth.role_grant_permission(name, permission, raw, end)
        click.echo(f"Role {name} updated")
        return EXIT_OK

    @role.command("revoke-permission")
    @click.argument("name")
    @_key_range
    @command_options
    def role_revoke_permission(name: str, key: str, range_end: str | None, prefix: bool,
                               from_key: bool, endpoints: list[str], timeout: float) -> int:
        """Revoke the permission on KEY (or the range, or the prefix) from a role."""
        raw = _key_bytes(key)
        end = _range_end(raw, range_end, prefix, from_key)
        with _connect(endpoints, timeout) as kv:
            kv.auth.role_revoke_permission(name, raw, end)
        described = _describe_range(raw, end)
        click.echo(f"Permission of {'range' if end else 'key'} {described} is revoked from "
                   f"role {name}")
        return EXIT_OK

    # --- kvraft auth ----------------------------------------------------------------------------
    @cli.group("auth")
    def auth_group() -> None:
        """Turn authentication on or off, or show it (enable needs the root user)."""

    one_call(auth_group, "enable",
             "Enable authentication (the root user must exist and hold the root role).", [],
             lambda auth: auth.enable(), lambda _: ["Authentication Enabled"])
    one_call(auth_group, "disable", "Disable authentication.", [],
             lambda auth: auth.disable(), lambda _: ["Authentication Disabled"])
    one_call(auth_group, "status", "Whether authentication is enabled, and the auth revision.",
             [], lambda auth: auth.status(),
             lambda status: [f"Authentication Status: {str(status.enabled).lower()}",
                             f"AuthRevision: {status.auth_revision}"])
