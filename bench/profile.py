"""`python -m bench.profile FILE [--top N] [--under FUNC]`: read a py-spy raw profile (written by
`python -m bench --profile DIR`) and print where the server's busy threads spent their samples:
inclusive share per function (own frames and below) and the leaf functions (self time)."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# A thread sampled while it waits is not work: waitress's idle workers, the scheduler's queue.
IDLE_LEAVES = ("Condition.wait", "Queue.get", "select (", "poll (", "Event.wait", "sleep (")
_FRAME = re.compile(r"^(?P<func>\S+) \((?P<file>[^:]+):\d+\)$")


def stacks(path: Path) -> Counter:
    """(frames without line numbers) -> samples, the thread-name frame dropped."""
    out: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            frames = frames[1:]
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        out[tuple(_short(f) for f in frames)] += int(count)
    return out


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['func']} ({file})"


def summary(path: Path, top: int = 20, under: str = "") -> str:
    counts = stacks(path)
    if under:
        counts = Counter({s[next(i for i, f in enumerate(s) if under in f):]: n
                          for s, n in counts.items() if any(under in f for f in s)})
    total = sum(counts.values()) or 1
    inclusive: Counter = Counter()
    leaves: Counter = Counter()
    for frames, n in counts.items():
        for f in set(frames):
            inclusive[f] += n
        leaves[frames[-1]] += n
    lines = [f"{path.name}: {total} busy samples" + (f" under {under}" if under else "")]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines.append("self (leaf):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in leaves.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--under", default="", help="only stacks through this function")
    args = parser.parse_args(argv)
    print(summary(args.file, args.top, args.under))


if __name__ == "__main__":
    main()
