"""Text from a build reaches the user's terminal: it must not be able to drive it."""

from __future__ import annotations

import re

# C0 controls but tab, DEL, and C1 controls (ESC starts colour codes, but also sequences that
# retitle the window, rewrite the screen or, on some terminals, answer with keystrokes)
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def terminal_safe(line: str) -> str:
    """`line` (one line, without its newline) with every control character but tab removed."""
    return _CONTROLS.sub("", line)
