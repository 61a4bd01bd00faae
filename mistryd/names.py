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
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        return "must not contain control characters"
    if not is_scalar_text(name):
        return "must be valid Unicode (no lone surrogates)"
    if any(c in BIDI_CONTROLS for c in name):
        return "must not contain bidirectional control characters"
    return None


# Characters that reorder how text is displayed: a name that contains them can look like another
# name in a log, a terminal or a web page.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069")


def is_scalar_text(text: str) -> bool:
    """Whether `text` is valid Unicode scalar text: JSON can carry lone UTF-16 surrogates
    ("\\ud800"), which no file name, SQLite row or UTF-8 page can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_name(what: str, name: object) -> str:
    problem = name_problem(name)
    if problem or not isinstance(name, str):  # name_problem refuses every non-string
        raise BadRequest(f"{what} {name!r} {problem}")
    return name
