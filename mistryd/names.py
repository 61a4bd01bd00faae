"""Which names may become path components: projects, groups and param keys."""

import re

from .errors import BadRequest

MAX_NAME_BYTES = 255


# the common case, checked in one step on the hot path: letters, digits, `_`, `-` and single dots
_PLAIN = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_-]|\.(?!\.)){0,254}")


def name_problem(name: object) -> str | None:
    """Why `name` cannot be used as a single path component, or None when it can."""
    if isinstance(name, str) and _PLAIN.fullmatch(name):
        return None
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "must not be empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes"
    if "\0" in name:
        return "must not contain NUL"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\'"
    if name.startswith("."):
        return "must not start with '.'"
    if ".." in name:
        return "must not contain '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not contain control characters"
    return None


def check_name(what: str, name: object) -> str:
    problem = name_problem(name)
    if problem:
        raise BadRequest(f"{what} {name!r} {problem}")
    return name  # type: ignore[return-value]
