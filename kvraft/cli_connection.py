"""The connection flags of the `kvraft` client commands (SPEC §3 and §8, docs/cli.md):
`--endpoints`, `--timeout`, `--cacert`, `--cert`, `--key` and `--user`.

Each is accepted before the command, as etcdctl takes its global flags
(`kvraft --endpoints H:P get k`), and after it (`kvraft get k --endpoints H:P`). Flag by
flag the value is, first found: the flag after the command, the flag before it, the
environment (`KVRAFT_<FLAG>`; empty counts as unset), the default.

kvraft/cli.py decorates its root group with `group_options` and every client command
with `command_options` (cli_etcd, cli_ops and cli_auth get that decorator from it); a
command that talks to no cluster is wrapped in `refuses_connection_flags`, so a flag
before it is a usage error rather than silently ignored. The running command reads its
values with `tls_files()` and `user_text()`; `--endpoints` and `--timeout` reach the
command function as its `endpoints` and `timeout` parameters.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from kvraft.cli_params import ENDPOINTS
from kvraft.client import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT_S

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConnectionFlag:
    flag: str                  # as typed: "--endpoints"
    dest: str                  # the value's name: "endpoints"; env KVRAFT_<DEST>
    type: click.ParamType
    default: Any               # None: the flag has no value unless given
    metavar: str
    help: str
    exposed: bool = False      # passed to the command function as `dest`

    @property
    def envvar(self) -> str:
        return f"KVRAFT_{self.dest.upper()}"

    @property
    def param_name(self) -> str:
        # Distinct from every command's own parameters: `get KEY` has an argument
        # named `key`, which --key must not shadow.
        return self.dest if self.exposed else f"connection_{self.dest}"


FLAGS: tuple[ConnectionFlag, ...] = (
    ConnectionFlag("--endpoints", "endpoints", ENDPOINTS, DEFAULT_ENDPOINT,
                   "HOST:PORT[,HOST:PORT...]", "Members to talk to.", exposed=True),
    ConnectionFlag("--timeout", "timeout", click.FloatRange(min=0, min_open=True),
                   DEFAULT_TIMEOUT_S, "SECONDS",
                   "Deadline of the whole command, failover included.", exposed=True),
    ConnectionFlag("--user", "user", click.STRING, None, "USER[:PASSWORD]",
                   "Authenticate as USER; asks for the password if not given."),
    ConnectionFlag("--cacert", "cacert", click.STRING, None, "FILE",
                   "Verify the members' certificates with this CA bundle (TLS)."),
    ConnectionFlag("--cert", "cert", click.STRING, None, "FILE",
                   "Client certificate, for members started with --client-cert-auth."),
    ConnectionFlag("--key", "key", click.STRING, None, "FILE",
                   "The client certificate's private key."),
)
_BY_PARAM = {f.param_name: f for f in FLAGS}
_BY_DEST = {f.dest: f for f in FLAGS}
TLS_DESTS = ("cacert", "cert", "key")

# The running command's resolved values, by dest, in the click context's meta (one
# dict shared by the whole context chain). Invariant: set only by `command_options`'
# callbacks, each flag's entry once it is resolved; a flag without a value (no TLS
# file, no user) is None.
_RESOLVED_META_KEY = "kvraft.connection"


@dataclass
class GroupFlags:
    """The root group's context object: the connection flags typed before the command.
    Invariant: holds a dest only if its flag was on the command line before the
    command, with its converted value (never the environment's or a default)."""

    given: dict[str, Any]


def _group_flags(ctx: click.Context) -> GroupFlags:
    found = ctx.find_object(GroupFlags)
    if found is None:
        found = ctx.find_root().obj = GroupFlags({})
    return found


def _help(flag: ConnectionFlag) -> str:
    default = f" [default: {flag.default}]" if flag.default is not None else ""
    return f"{flag.help.removesuffix('.')} (env {flag.envvar}).{default}"


# --------------------------------------------------------------------------- before


def _remember_before(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None and param.name:
        _group_flags(ctx).given[_BY_PARAM[param.name].dest] = value


def group_options(fn: F) -> F:
    """The connection flags on the root group (before the command). They read no
    environment and have no default: the command's own flags resolve those."""
    for flag in reversed(FLAGS):  # the last decorator applied shows first in --help
        fn = click.option(flag.flag, flag.param_name, type=flag.type, default=None,
                          metavar=flag.metavar, expose_value=False,
                          callback=_remember_before, help=_help(flag))(fn)
    return fn


# --------------------------------------------------------------------------- after


def _resolve(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """After the command > before it > the environment > the default."""
    assert param.name is not None
    flag = _BY_PARAM[param.name]
    if value is None:
        value = _group_flags(ctx).given.get(flag.dest)
    if value is None:
        raw = os.environ.get(flag.envvar)
        # As click reads an option's envvar: empty is unset, a bad value a usage error
        # naming the flag.
        value = param.type_cast_value(ctx, raw) if raw else None
    if value is None and flag.default is not None:
        value = param.type_cast_value(ctx, flag.default)  # "H:P" -> ["H:P"], as click's
    ctx.meta.setdefault(_RESOLVED_META_KEY, {})[flag.dest] = value
    return value


def command_options(fn: F) -> F:
    """The connection flags on a client command (after it); `--endpoints` and
    `--timeout` become the function's `endpoints` and `timeout` parameters."""
    for flag in reversed(FLAGS):
        fn = click.option(flag.flag, flag.param_name, type=flag.type, default=None,
                          metavar=flag.metavar, expose_value=flag.exposed,
                          callback=_resolve, help=_help(flag))(fn)
    return fn


def is_client_command(command: click.Command) -> bool:
    """Whether `command` takes the connection flags (was given `command_options`)."""
    return any(p.name in _BY_PARAM and p.callback is _resolve for p in command.params)


def _resolved(dest: str) -> Any:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_RESOLVED_META_KEY, {}).get(dest) if ctx is not None else None


def tls_files() -> dict[str, str]:
    """The running command's --cacert/--cert/--key that have a value, as the keywords
    of Client(...) and ClientTLS.from_options ({}: no TLS)."""
    return {dest: value for dest in TLS_DESTS if (value := _resolved(dest))}


def user_text() -> str | None:
    """The running command's --user USER[:PASSWORD] (None or empty: none)."""
    value = _resolved("user")
    return str(value) if value else None


# --------------------------------------------------------------------------- refused


def refuses_connection_flags(why: Callable[[str], str]) -> Callable[[F], F]:
    """For a command that talks to no cluster: a connection flag given before it is a
    usage error, `<flag> is a client flag; <why(flag)>`. Apply it below the click
    decorators (it wraps the function they register)."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def refusing(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            given = _group_flags(ctx).given
            if given:
                first = _BY_DEST[next(iter(given))].flag  # the first one typed
                raise click.UsageError(f"{first} is a client flag; {why(first)}", ctx)
            return fn(*args, **kwargs)
        return refusing  # type: ignore[return-value]
    return decorate
