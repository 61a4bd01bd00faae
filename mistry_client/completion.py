"""Shell completion of project names (`GET /projects`) and build ids (`GET /index/`), asked of
the server. Completion runs on every Tab: an unreachable or slow server gives no names, quickly,
and never an error."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from .errors import ServerError

if TYPE_CHECKING:
    from .api import Client

TIMEOUT = 1.0  # seconds to connect, and again to answer: a Tab should not hang
SHOWN = 12  # characters of an id, as the web view and `mistry ls` show them
ID_CANDIDATES = 50  # the newest builds offered for an id (a shell lists them all)
_HEX = re.compile(r"[0-9a-f]*")
# a server that cannot answer gives no names and no error: a traceback would land in the
# middle of the command line being typed (ValueError: a --host that is not one; wire errors)
_QUIET = Exception


def project_names(ctx: click.Context, incomplete: str) -> list[str]:
    try:
        return _project_names(_client(ctx), incomplete)
    except _QUIET:
        return []


def build_ids(ctx: click.Context, incomplete: str, project: str = "") -> list[CompletionItem]:
    """The builds (of `project`, when given) whose id starts with `incomplete`, newest first,
    each as its shortest prefix of at least 12 characters that no other of them shares, with
    project, status and start as its description (zsh and fish show it)."""
    prefix = incomplete.lower()
    if not _HEX.fullmatch(prefix):
        return []
    try:
        rows = _client(ctx).index(limit=ID_CANDIDATES, project=project, id_prefix=prefix,
                                  read_timeout=TIMEOUT)
    except _QUIET:
        return []
    ids = [str(r.get("id")) for r in rows]
    return [CompletionItem(unique_prefix(i, ids, max(SHOWN, len(prefix))),
                           help=_describe(r)) for i, r in zip(ids, rows, strict=True)]


def projects_and_ids(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """The first word of `mistry status|logs|cancel [PROJECT] ID`: a project, or an id (of any
    project) once a hex digit is typed."""
    items = [CompletionItem(n) for n in project_names(ctx, incomplete)]
    return items + (build_ids(ctx, incomplete) if incomplete else [])


def unique_prefix(build_id: str, ids: list[str], length: int) -> str:
    """`build_id`'s first `length` characters, or more until no other of `ids` starts so."""
    others = [i for i in ids if i != build_id]
    while length < len(build_id) and any(o.startswith(build_id[:length]) for o in others):
        length += 1
    return build_id[:length]


def _describe(row: dict) -> str:
    started = str(row.get("startedAt") or (row.get("buildInfo") or {}).get("StartedAt") or "")
    return " ".join(str(part) for part in (row.get("project"), row.get("status"),
                                           started[:19].replace("T", " ")) if part)


def _project_names(client: Client, incomplete: str) -> list[str]:
    try:
        names = client.projects(read_timeout=TIMEOUT)
    except ServerError as e:
        if e.status != 404:
            raise
        # a server without /projects (an older mistryd, upstream): the projects built lately
        names = sorted({str(r.get("project"))
                        for r in client.index(limit=500, read_timeout=TIMEOUT)})
    return [n for n in names if n.startswith(incomplete)]


def _client(ctx: click.Context) -> Client:
    """A client for the server the words typed so far name (--host, --port, --token or their
    environment variables), with short timeouts."""
    from .api import Client

    params = ctx.params
    host = params.get("host") or os.environ.get("MISTRY_HOST") or "127.0.0.1"
    port = params.get("port") or _int(os.environ.get("MISTRY_PORT")) or 8462
    token = ctx.meta.get("mistry.token") or os.environ.get("MISTRY_TOKEN") or None
    return Client(host, port, connect_timeout=TIMEOUT, token=token)


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None

