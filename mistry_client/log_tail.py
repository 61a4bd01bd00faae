"""The log a client has followed, kept as the BuildInfo's `ContainerStdouterr`: the server's `end`
event carries the BuildInfo without it (the follower has just received every line)."""

from __future__ import annotations

from collections import deque

LIMIT = 1 << 20  # as the server's answers: the last MiB of a longer log, after a note saying so


class LogTail:
    def __init__(self, whole_log_url: str, limit: int = LIMIT):
        self.whole_log_url = whole_log_url
        self.limit = limit
        self.lines: deque[str] = deque()
        self.size = 0  # bytes (UTF-8) held, newlines counted
        self.dropped = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line.encode("utf-8", "replace")) + 1
        while self.size > self.limit and len(self.lines) > 1:
            first = self.lines.popleft()
            self.size -= len(first.encode("utf-8", "replace")) + 1
            self.dropped += 1

    def text(self) -> str:
        body = "".join(f"{line}\n" for line in self.lines)
        if not self.dropped:
            return body
        return (f"[mistry: {self.dropped} earlier lines are left out here; the whole log: "
                f"{self.whole_log_url}]\n{body}")
