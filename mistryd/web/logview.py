"""A build log as the web view shows it: lines with their colours (ANSI SGR codes turned into
escaped HTML by ansi2html), the stream each came from and its time (from out.log.marks).

ansi2html escapes the text (`escaped=True`) and writes colours as CSS classes, never as inline
styles, so the page's Content-Security-Policy (`style-src 'self'`) holds: static/ansi.css has
the classes. Everything else a terminal would act on (cursor moves, window titles, hyperlinks,
other control characters) is dropped, and a line redrawn with `\\r` shows what a terminal ends
with: the text after its last carriage return.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ansi2html import Ansi2HTMLConverter
from markupsafe import Markup, escape

from ..logs import LiveLog, Marks, open_marks

_SGR = re.compile(r"\x1b\[([0-9;]*)m")
# what is not a colour: OSC strings (titles, hyperlinks), other CSI sequences, lone escapes and
# control characters other than tab
_NOT_COLOUR = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b\[[0-9;?]*[A-Za-ln-z@`]"
                         r"|\x1b[^\[]|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
MAX_CARRIED = 12  # colour codes carried to the next line (a reset empties the list)


@dataclass
class LogLine:
    html: Markup
    stream: str  # o, e, i, m (logs.STDOUT ...), or "" when the log has no marks
    ms: int  # epoch milliseconds of the write the line started in; 0 when unknown
    end: int  # byte offset after the line


class AnsiLines:
    """Turns lines into HTML one at a time, carrying the colour still open at the end of a line
    into the next (ansi2html starts afresh with every call)."""

    def __init__(self) -> None:
        self._converter = Ansi2HTMLConverter(inline=False, escaped=True, dark_bg=True)
        self._open: list[str] = []

    def html(self, text: str) -> Markup:
        text = _NOT_COLOUR.sub("", text.rstrip("\r"))
        carried = "".join(self._open)
        head, cr, shown = text.rpartition("\r")
        if cr:
            self._follow(head)
            carried = "".join(self._open)
        self._follow(shown)
        if "\x1b" not in carried + shown:
            return escape(shown)
        return Markup(self._converter.convert(carried + shown, full=False))

    def _follow(self, text: str) -> None:
        for m in _SGR.finditer(text):
            codes = m.group(1)
            if codes in ("", "0") or codes.startswith("0;"):
                self._open = [] if codes in ("", "0") else [m.group(0)]
            else:
                self._open = (self._open + [m.group(0)])[-MAX_CARRIED:]


def render(lines: list[tuple[int, str]], start: int, marks: Marks | None) -> list[LogLine]:
    """[(offset after the line, text)] from byte `start` on, as LogLines."""
    starts = [start] + [end for end, _ in lines[:-1]]
    found = marks.at(starts) if marks is not None and lines else [None] * len(lines)
    ansi = AnsiLines()
    out = []
    for (end, text), mark in zip(lines, found, strict=True):
        stream, ms = mark if mark is not None else ("", 0)
        out.append(LogLine(ansi.html(text), stream, ms, end))
    return out


class PageRenderer:
    """The log stream's data for the build page (`/log/...?format=page`): one JSON object per
    line, {"h": its HTML, "s": its stream, "t": epoch ms}. The marks are looked for again until
    they exist (a queued build's log has none yet). `close` when the stream ends."""

    def __init__(self, live: LiveLog | None, path: Path) -> None:
        self._live, self._path = live, path
        self._marks: Marks | None = None
        self._ansi = AnsiLines()

    def __call__(self, start: int, end: int, text: str) -> str:
        if self._marks is None:
            self._marks = open_marks(self._live, self._path)
        mark = self._marks.at([start])[0] if self._marks is not None else None
        stream, ms = mark if mark is not None else ("", 0)
        return json.dumps({"h": str(self._ansi.html(text)), "s": stream, "t": ms})

    def close(self) -> None:
        if self._marks is not None:
            self._marks.close()


def stylesheet() -> str:
    """static/ansi.css: ansi2html's classes (xterm's palette), scoped to the log panel. Written
    by `python -m mistryd.web.logview > mistryd/web/static/ansi.css`; a unit test keeps the file
    and the library in step."""
    from ansi2html.style import get_styles

    rules = [str(rule) for rule in get_styles(dark_bg=True, line_wrap=False, scheme="xterm")]
    scoped = [".log " + rule for rule in rules
              if rule.startswith((".ansi", ".inv")) and not rule.startswith(".ansi2html")]
    return ("/* Build log colours: generated from ansi2html's classes by mistryd/web/logview.py "
            "(stylesheet). */\n" + "\n".join(scoped) + "\n")


if __name__ == "__main__":
    print(stylesheet(), end="")
