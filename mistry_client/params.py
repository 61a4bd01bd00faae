"""Dynamic build params after `--`: `--k v`, `--k=v` and bare `k=v`; a value `@path` is that
file's content. Everything after the first `=` is the value (upstream cut it at the second)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


class ParamError(ValueError):
    pass


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ParamError(f"cannot read {path} ({e.strerror})") from None


def parse_params(args: Sequence[str],
                 read_file: Callable[[str], str] = _read) -> dict[str, str]:
    """{key: value} from the words after `--`. ParamError names the word that is wrong."""
    params: dict[str, str] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-"):
            name = word.lstrip("-")
            if "=" in name:
                key, value = name.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                key, value = name, args[i + 1]
                i += 1
            else:
                raise ParamError(f"param {word!r} has no value (use {word}=VALUE or {word} VALUE)")
        elif "=" in word:
            key, value = word.split("=", 1)
        else:
            raise ParamError(f"unexpected word {word!r}: params look like --key value or key=value")
        if not key:
            raise ParamError(f"param {word!r} has no name")
        if value.startswith("@") and len(value) > 1:
            value = read_file(value[1:])
        params[key] = value
        i += 1
    return params
