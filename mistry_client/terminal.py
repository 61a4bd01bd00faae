"""Text from a build reaches the user's terminal: it must not be able to drive it."""

from __future__ import annotations

import re

# C0 controls but tab, DEL, and C1 controls (ESC starts colour codes, but also sequences that
# retitle the window, rewrite the screen or, on some terminals, answer with keystrokes)
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def terminal_safe(line: str) -> str:
    """`line` (one line, without its newline) with every control character but tab removed."""
    return _CONTROLS.sub("", line)


# a colour or text attribute (SGR: ESC [ digits ; digits m) is all a build may send a terminal
_SGR = re.compile("\x1b\\[[0-9;:]*m")


def terminal_safe_keeping_colours(line: str) -> str:
    """`line` for a terminal that shows the build's colours: its colour codes (SGR) kept, every
    other escape sequence removed whole (a cursor move leaves no `[1A` behind), then every
    control character but tab; of a line that rewrites itself with carriage returns (a progress
    counter) what a terminal shows last, in the colours of the parts written over."""
    colours_before, line = _last_rewrite(line)
    out, pos = list(colours_before), 0
    for m in _SEQUENCES.finditer(line):
        out.append(_CONTROLS.sub("", line[pos:m.start()]))
        if _SGR.fullmatch(m.group()):
            out.append(m.group())
        pos = m.end()
    out.append(_CONTROLS.sub("", line[pos:]))
    return "".join(out)


# whole escape sequences: CSI (ESC [ ... final byte, colours among them) and OSC (ESC ] ... BEL/ST)
_SEQUENCES = re.compile("\x1b\\[[0-?]*[ -/]*[@-~]|\x1b\\][^\x07\x1b]*(?:\x07|\x1b\\\\)?")


def plain_text(line: str) -> str:
    """`line` for a pipe or NO_COLOR: escape sequences removed whole (no `[31m` left behind),
    of a line that rewrites itself with carriage returns what a terminal shows last (not
    `10%20%done` but `done`), then every control character but tab."""
    return _CONTROLS.sub("", _SEQUENCES.sub("", _last_rewrite(line)[1]))


def _last_rewrite(line: str) -> tuple[list[str], str]:
    """(the colour codes of the parts written over, the last part) of a line whose parts a
    carriage return starts again from the left; a `\\r` at its end (`\\r\\n`) rewrites nothing."""
    line = line.rstrip("\r")
    if "\r" not in line:
        return [], line
    over, _, last = line.rpartition("\r")
    return _SGR.findall(over), last
