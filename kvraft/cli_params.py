"""The parameter types of the `kvraft` command line: each a parse function of
kvraft.client or kvraft.server.config, whose error is click's usage error in its words
(`Invalid value for '--listen': malformed address 'h': expected HOST:PORT`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from kvraft.client import parse_endpoint, parse_endpoints
from kvraft.server.config import ServeError, parse_initial_cluster, parse_member_id


class ParsedType(click.ParamType):
    """Text parsed by `parse`; a value that is already `parsed` (a default given as
    the result, a value converted once already) passes as it is."""

    def __init__(self, name: str, parse: Callable[[str], Any],
                 parsed: type | None = None) -> None:
        self.name = name
        self.parse = parse
        self.parsed = parsed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if self.parsed is not None and isinstance(value, self.parsed):
            return value
        try:
            return self.parse(str(value))
        except (ValueError, ServeError) as e:
            self.fail(str(e), param, ctx)


ADDRESS = ParsedType("HOST:PORT", parse_endpoint)
ENDPOINTS = ParsedType("HOST:PORT[,HOST:PORT...]", parse_endpoints, parsed=list)
# An int (a default) goes through the text again: the same range check either way.
MEMBER_ID = ParsedType("ID", parse_member_id)
INITIAL_CLUSTER = ParsedType("ID=HOST:PORT[,...]", parse_initial_cluster, parsed=dict)
