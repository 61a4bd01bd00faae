"""A build named by a unique prefix of its id (the web view shows 12 characters), with or without
its project: `mistry status 3fa9c1d2e4b5`, `mistry logs hello 3fa9`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import EXIT_USAGE, ClientError

if TYPE_CHECKING:
    from .api import Client

FULL_LENGTH = 64  # a build id is a sha256, in hex
_HEX = re.compile(r"[0-9a-f]+")
SHOWN = 5  # candidates named in the message about an ambiguous prefix


class AmbiguousId(ClientError):
    """More than one build starts with the prefix: the user must type more of it."""

    exit_code = EXIT_USAGE


class UnknownId(ClientError):
    """No build starts with the prefix (as the server's 404 for a whole id: exit code 3)."""


def resolve(client: Client, project: str | None, text: str) -> tuple[str, str]:
    """(project, whole id) of the one build `text` names. A whole id with its project is taken as
    it is (no request); anything else is looked up in the server's index."""
    prefix = text.strip().lower()
    if project is not None and (len(prefix) == FULL_LENGTH or not _HEX.fullmatch(prefix)):
        return project, text  # as before: the server says whether it exists
    if not _HEX.fullmatch(prefix) or len(prefix) > FULL_LENGTH:
        raise AmbiguousId(f"{text!r} is not a build id or the start of one: ids are "
                          "hexadecimal (0-9, a-f), as `mistry ls` shows them")
    rows = client.index(limit=SHOWN + 1, project=project or "", id_prefix=prefix)
    where = f" of project {project!r}" if project else ""
    if not rows:
        raise UnknownId(f"no build{where} has an id starting with {prefix!r} (`mistry ls` "
                        "lists the builds)")
    if len(rows) > 1:
        names = ", ".join(f"{r.get('project')}/{str(r.get('id'))[:16]}" for r in rows[:SHOWN])
        more = ", ..." if len(rows) > SHOWN else ""
        raise AmbiguousId(f"{prefix!r} is the start of more than one build id{where} ({names}"
                          f"{more}); type more of it")
    return str(rows[0]["project"]), str(rows[0]["id"])
