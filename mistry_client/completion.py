"""Shell completion of project names, asked of the server (`GET /projects`). Completion runs on
every Tab: an unreachable or slow server gives no names, quickly, and never an error."""

from __future__ import annotations

import os

import click

TIMEOUT = 1.0  # seconds to connect, and again to answer: a Tab should not hang


def project_names(ctx: click.Context, incomplete: str) -> list[str]:
    from .api import Client
    from .errors import ClientError, ServerError

    params = ctx.params
    host = params.get("host") or os.environ.get("MISTRY_HOST") or "127.0.0.1"
    port = params.get("port") or _int(os.environ.get("MISTRY_PORT")) or 8462
    token = ctx.meta.get("mistry.token") or os.environ.get("MISTRY_TOKEN") or None
    try:
        client = Client(host, port, connect_timeout=TIMEOUT, token=token)
        try:
            names = client.projects(read_timeout=TIMEOUT)
        except ServerError as e:
            if e.status != 404:
                raise
            # a server without /projects (an older mistryd, upstream): the projects built lately
            names = sorted({str(r.get("project")) for r in client.index(limit=500)})
    except (ClientError, ValueError, OSError):
        return []
    return [n for n in names if n.startswith(incomplete)]


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None
