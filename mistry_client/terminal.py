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
    """`line` as terminal_safe leaves it, but with its colour codes (SGR) kept."""
    out, pos = [], 0
    for m in _SGR.finditer(line):
        out.append(_CONTROLS.sub("", line[pos:m.start()]))
        out.append(m.group())
        pos = m.end()
    out.append(_CONTROLS.sub("", line[pos:]))
    return "".join(out)


# whole escape sequences: CSI (ESC [ ... final byte, colours among them) and OSC (ESC ] ... BEL/ST)
_SEQUENCES = re.compile("\x1b\\[[0-?]*[ -/]*[@-~]|\x1b\\][^\x07\x1b]*(?:\x07|\x1b\\\\)?")


def plain_text(line: str) -> str:
    """`line` for a pipe or NO_COLOR: escape sequences removed whole (no `[31m` left behind),
    then every control character but tab."""
    return _CONTROLS.sub("", _SEQUENCES.sub("", line))
