"""The `mistry` command's entry point. A plain `mistry build` line, the command scripts and CI run
most and where a cache hit is mostly the interpreter's start-up, is read here with the options of
options.py and run without loading click (about a third of the command's start-up). Any other
line, and any `build` line this reader is not sure to read exactly as click does (--help, an
option it does not know or given twice, a value it would not take, a short option with its value
attached, a word before `--`), goes to the click application in cli.py, which reads it again and
answers as always: its messages, its exit codes, its completion."""

from __future__ import annotations

import os
import stat
import sys

from .durations import positive_duration
from .errors import exit_code_of
from .options import BUILD_OPTIONS, CHOICE, DURATION, FLAG, FOLDER, MANY, PORT, PORT_RANGE, Option
from .params import parse_params

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

_BY_FLAG = {flag: option for option in BUILD_OPTIONS for flag in option.flags}


class Unsure(Exception):
    """A line for click to read."""


def main() -> None:
    """`mistry`: a plain build line here, everything else through click."""
    try:
        options = read_build_line(sys.argv[1:], os.environ)
        host, port, token = options.pop("host"), options.pop("port"), options.pop("token")
        options["build_params"] = parse_params(options.pop("params"))
        from .api import Client

        client = Client(host, port, token=token)
    except (Unsure, ValueError):  # (a ParamError, a host Client refuses: click says so)
        from .cli import main as click_main

        click_main()
        return
    from .build_command import run_build

    try:
        code = exit_code_of(lambda: run_build(client, token, **options))
    except KeyboardInterrupt:  # as click ends an interrupted command
        print("\nAborted!", file=sys.stderr)
        code = 1
    sys.exit(code or 0)


def read_build_line(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any]:
    """The parameters click would call `mistry build` with (the token too), from a command line
    that starts with `build`; Unsure for any line this does not read exactly as click does."""
    if not argv or argv[0] != "build":
        raise Unsure
    given: dict[str, Any] = {}
    words, params = list(argv[1:]), []
    while words:
        word = words.pop(0)
        if word == "--":
            params = words
            break
        flag, equals, text = word.partition("=") if word.startswith("--") else (word, "", "")
        option = _BY_FLAG.get(flag)
        if option is None:
            raise Unsure  # a word before `--`, --help, an unknown option, `-tout`
        if option.kind == FLAG:
            if equals or option.name in given:
                raise Unsure
            given[option.name] = True
            continue
        if not equals:
            if not words or words[0].startswith("-"):
                raise Unsure
            text = words.pop(0)
        if option.kind == MANY:
            given[option.name] = (*given.get(option.name, ()), text)
        elif option.name in given:
            raise Unsure
        else:
            given[option.name] = text
    values = {option.name: _value(option, given, environ) for option in BUILD_OPTIONS}
    values["params"] = tuple(params)
    return values


def _value(option: Option, given: dict[str, Any], environ: Mapping[str, str]) -> object:
    if option.name in given:
        value = given[option.name]
    elif option.envvar and environ.get(option.envvar):  # (click takes no empty variable)
        value = environ[option.envvar]
    elif option.required:
        raise Unsure
    else:
        value = option.default
    if not isinstance(value, str):
        return value
    if option.kind == PORT:
        if not value.isascii() or not value.isdigit() \
                or not PORT_RANGE[0] <= int(value) <= PORT_RANGE[1]:
            raise Unsure
        return int(value)
    if option.kind == CHOICE and value not in option.choices:
        raise Unsure
    if option.kind == DURATION:
        try:
            return positive_duration(value)
        except ValueError:
            raise Unsure from None
    if option.kind == FOLDER:
        try:
            mode = os.stat(value).st_mode
        except OSError:
            return value  # (made by the fetch)
        if stat.S_ISREG(mode) or not os.access(value, os.R_OK):  # click.Path refuses these
            raise Unsure
    return value
