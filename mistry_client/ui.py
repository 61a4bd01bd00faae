"""What `mistry` shows people: the build's URL at submit, a live status line while it waits, a
download bar, and a summary at the end.

Two faces of one interface. `Plain` writes lines of text (a pipe, a file, TERM=dumb, and what
scripts read): no styles, no status line, and no import beyond click. `Rich` is for a terminal:
colours (none with NO_COLOR), a status line that redraws itself in place and a download bar with
bytes, speed and time left, from the `rich` library, imported only here and only then (about
40 ms of start-up that a script or a benchmark never pays).

Human messages go to stdout, or to stderr when stdout carries `--json-result`'s JSON.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .terminal import plain_text, terminal_safe, terminal_safe_keeping_colours

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from .watch import JobState


class Fetched:
    """What a fetch did (None when a transport cannot tell: rsync, scp): files downloaded, their
    bytes, files the target held as built (left in place), and how long it took."""

    __slots__ = ("files", "bytes", "already", "seconds")

    def __init__(self, files: int, bytes: int, already: int, seconds: float = 0.0):
        self.files, self.bytes, self.already, self.seconds = files, bytes, already, seconds


def make_output(json_result: bool, stream: TextIO | None = None) -> Output:
    """`Rich` when the human messages go to a terminal that can show it, else `Plain`."""
    stream = stream or (sys.stderr if json_result else sys.stdout)
    if is_terminal(stream):
        return Rich(stream, error_stream=sys.stderr)
    return Plain(stream, error_stream=sys.stderr)


def is_terminal(stream: TextIO) -> bool:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


def no_color() -> bool:
    """https://no-color.org: any non-empty NO_COLOR turns colours off."""
    return bool(os.environ.get("NO_COLOR"))


def log_colours(asked: bool | None, stream: TextIO) -> bool:
    """Whether a build's log keeps its own colours: as asked (`mistry logs --color` for a pipe
    into `less -R`, `--no-color`), else on a terminal without NO_COLOR."""
    if asked is None:
        return is_terminal(stream) and not no_color()
    return asked


# --- words and numbers, shared by both faces ---------------------------------------------------


def short_id(build_id: str) -> str:
    return build_id[:12]  # as the web view shows ids


def human_size(n: int) -> str:
    """Decimal units (kB = 1000 B), as rich's download bar shows sizes and speeds."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def ticking(seconds: float) -> str:
    """The status line's clock: whole seconds (a tenth that changes 8 times a second flickers)."""
    whole = int(seconds)
    return f"{whole}s" if whole < 60 else human_duration(whole)


def human_duration(seconds: float) -> str:
    """40ms, 2.1s, 42s, 3m05s, 1h02m: as precise as a person reads it."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def state_words(state: JobState) -> str:
    """The status line's text: `queued: 2nd of 3 · 4s`, `running · 1m05s`."""
    elapsed = ticking(state.elapsed())
    joined = "joined a running build · " if state.joined and state.status == "running" else ""
    if state.status == "queued":
        place = f": {ordinal(state.position)} of {state.length}" if state.position else ""
        return f"queued{place} · {elapsed}"
    if state.status == "running":
        return f"{joined}running · {elapsed}"
    return f"waiting for mistryd · {elapsed}"


def outcome_of(info: dict) -> str:
    status = info.get("Status")
    if isinstance(status, str) and status not in ("", "queued", "running"):
        return status
    return "succeeded" if info.get("ExitCode") == 0 else "failed"


def how_built(info: dict, joined: bool) -> list[str]:
    tags = []
    if info.get("Cached"):
        tags.append("cached")
    if info.get("Incremental"):
        tags.append("incremental")
    if joined or info.get("Coalesced"):
        tags.append("joined")
    return tags


def outcome_line(info: dict, joined: bool) -> str:
    """`hello/3fa9c1d2e4b5 succeeded in 2.1s (cached, incremental)`."""
    duration = info.get("Duration")
    took = f" in {human_duration(duration / 1e9)}" if isinstance(duration, int | float) \
        and duration > 0 else ""
    tags = how_built(info, joined)
    built = f" ({', '.join(tags)})" if tags else ""
    return f"{info.get('Project')}/{short_id(str(info.get('ID')))} {outcome_of(info)}{took}{built}"


def fetched_line(fetched: Fetched | None, target: Path, transport: str) -> str:
    where = str(target.resolve())
    if fetched is None:
        return f"Fetched the artifacts with {transport} into {where}"
    if not fetched.files:
        if not fetched.already:
            return f"The build has no files to fetch; {where} is as built"
        return f"Nothing to fetch: {where} holds the {_files(fetched.already)} as built"
    speed = f", {human_size(int(fetched.bytes / fetched.seconds))}/s" \
        if fetched.seconds > 0 and fetched.bytes else ""
    kept = f"; {_files(fetched.already)} already there" if fetched.already else ""
    return (f"Fetched {_files(fetched.files)} ({human_size(fetched.bytes)}) in "
            f"{human_duration(fetched.seconds)}{speed} into {where}{kept}")


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def cached_note(info: dict | None) -> str:
    when = (info or {}).get("StartedAt")
    return f"Cached: a finished build{f' of {when}' if when else ''}; nothing was built"


def describe(view: dict, url: str) -> tuple[str, list[str]]:
    """`mistry status` for people: a headline and `name  value` lines, from a JobView."""
    from .watch import JobState

    info = view.get("BuildInfo") or {}
    project, build_id = view.get("Project"), str(view.get("ID"))
    if view.get("State") == "ready":
        headline = outcome_line({**info, "Project": project, "ID": build_id,
                                 "Status": view.get("Status")}, False)
    else:
        state = JobState()
        state.saw(view)
        headline = f"{project}/{short_id(build_id)} {state_words(state)}"
    fields = [("id", build_id), ("started", info.get("StartedAt")),
              ("group", info.get("Group")),
              ("params", ", ".join(f"{k}={v}" for k, v in sorted((info.get("Params") or {})
                                                                   .items()))),
              ("exit code", info.get("ExitCode") if view.get("State") == "ready" else None),
              ("error", info.get("ErrBuild")), ("log", url)]
    width = max(len(name) for name, _ in fields)
    return headline, [f"  {name.ljust(width)}  {terminal_safe(str(value))}"
                      for name, value in fields if value not in (None, "")]


def build_rows(rows: list[dict]) -> list[list[str]]:
    """`mistry ls`'s cells from index entries: id, project, status, start, duration, group."""
    cells = []
    for row in rows:
        info = row.get("buildInfo") or {}
        started = str(row.get("startedAt") or info.get("StartedAt") or "")
        duration = info.get("Duration")
        took = human_duration(duration / 1e9) if isinstance(duration, int | float) \
            and duration > 0 and row.get("state") == "ready" else ""
        cells.append([short_id(str(row.get("id"))), str(row.get("project")),
                      str(row.get("status")), started[:19].replace("T", " "), took,
                      str(info.get("Group") or "")])
    return [[terminal_safe(c) for c in r] for r in cells]


# --- the two faces -----------------------------------------------------------------------------


class Output:
    live = False  # whether it shows a status line (and so wants the server asked about it)

    def __init__(self, stream: TextIO, error_stream: TextIO):
        self.stream = stream
        self.error_stream = error_stream

    def say(self, text: str) -> None:
        raise NotImplementedError

    def error(self, text: str) -> None:
        raise NotImplementedError

    def note(self, text: str) -> None:
        """A remark before the log (cached, joined): dim on a terminal."""
        self.say(text)

    def log_line(self, line: str, recorded: bool = False) -> None:
        """One line of the build's log (`-v`); `recorded`: from a build that has ended."""
        raise NotImplementedError

    def waiting(self, state: JobState) -> contextlib.AbstractContextManager[None]:
        """While the build is waited for: the status line, where there is one."""
        return contextlib.nullcontext()

    def download_bar(self, total: int) -> contextlib.AbstractContextManager[Any]:
        """A bar with `.update(n)` for `total` bytes to fetch."""
        return contextlib.nullcontext(_NoBar())

    def outcome(self, info: dict, joined: bool) -> None:
        self.say(outcome_line(info, joined))

    def fetched(self, fetched: Fetched | None, target: Path, transport: str) -> None:
        self.say(fetched_line(fetched, target, transport))

    def status(self, view: dict, url: str) -> None:
        headline, lines = describe(view, url)
        self.say(headline)
        for line in lines:
            self.say(line)

    def error_detail(self, text: str) -> None:
        """The build's own words on a failure (its stderr): as a log line, on stderr."""
        for line in text.rstrip("\n").split("\n"):
            self.error(plain_text(line))

    def table(self, header: list[str], rows: list[list[str]], status_column: int) -> None:
        raise NotImplementedError


class _NoBar:
    def update(self, n: int) -> None:
        pass


class Plain(Output):
    def _write(self, stream: TextIO, text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    def say(self, text: str) -> None:
        self._write(self.stream, text)

    def error(self, text: str) -> None:
        self._write(self.error_stream, text)

    def log_line(self, line: str, recorded: bool = False) -> None:
        self._write(self.stream, plain_text(line))

    def table(self, header: list[str], rows: list[list[str]], status_column: int) -> None:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip())


STATUS_STYLES = {"succeeded": "green", "failed": "red", "cancelled": "yellow",
                 "timed-out": "red", "abandoned": "red", "queued": "cyan", "running": "blue"}


class Rich(Output):
    """A terminal: rich's Console on the human stream, and one on stderr for errors."""

    live = True

    def __init__(self, stream: TextIO, error_stream: TextIO):
        super().__init__(stream, error_stream)
        from rich.console import Console

        # NO_COLOR: no styles at all (color_system=None), but still the status line and the bar
        options: dict[str, Any] = {"highlight": False, "soft_wrap": True}
        if no_color():
            options["color_system"] = None
        self.console = Console(file=stream, **options)
        self.errors = Console(file=error_stream, stderr=error_stream is sys.stderr, **options)
        self._decoder: Any = None  # the log's colours: one decoder, so a colour spans lines

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)

    def error(self, text: str) -> None:
        self.errors.print(text, style="red", markup=False)

    def note(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False)

    def log_line(self, line: str, recorded: bool = False) -> None:
        from rich.ansi import AnsiDecoder

        if self._decoder is None:
            self._decoder = AnsiDecoder()
        safe = plain_text(line) if no_color() else terminal_safe_keeping_colours(line)
        text = self._decoder.decode_line(safe)
        if recorded:
            text.stylize("dim")
        self.console.print(text)

    @contextlib.contextmanager
    def waiting(self, state: JobState) -> Iterator[None]:
        from rich.live import Live

        with Live(_StatusLine(state), console=self.console, refresh_per_second=8,
                  transient=True, redirect_stdout=False, redirect_stderr=False):
            yield

    @contextlib.contextmanager
    def download_bar(self, total: int) -> Iterator[Any]:
        if total == 0:
            yield _NoBar()
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        # no refresh thread (auto_refresh=False): the fetch may fork its workers meanwhile;
        # the bar is redrawn from update(), at most ten times a second
        progress = Progress(TextColumn("Fetching"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                            transient=True, auto_refresh=False)
        task = progress.add_task("fetch", total=total)
        with progress:
            yield _ThrottledBar(lambda n: progress.advance(task, n), progress.refresh)

    def outcome(self, info: dict, joined: bool) -> None:
        from rich.text import Text

        good = outcome_of(info) == "succeeded"
        self.console.print(Text.assemble(("✓ " if good else "✗ ", "bold green" if good
                                          else "bold red"), outcome_line(info, joined)))

    def fetched(self, fetched: Fetched | None, target: Path, transport: str) -> None:
        self.console.print("  " + fetched_line(fetched, target, transport), markup=False)

    def status(self, view: dict, url: str) -> None:
        from rich.text import Text

        headline, lines = describe(view, url)
        style = STATUS_STYLES.get(str(view.get("Status")), "")
        self.console.print(Text(headline, style=f"bold {style}".strip()))
        for line in lines:
            self.say(line)

    def table(self, header: list[str], rows: list[list[str]], status_column: int) -> None:
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in header:
            table.add_column(name, overflow="fold")
        for row in rows:
            cells: list[Any] = list(row)
            style = STATUS_STYLES.get(row[status_column])
            if style:
                from rich.text import Text

                cells[status_column] = Text(row[status_column], style=style)
            table.add_row(*cells)
        self.console.print(table)


class _ThrottledBar:
    def __init__(self, advance: Callable[[int], None], refresh: Callable[[], None]):
        self.advance = advance
        self.refresh = refresh
        self.drawn = 0.0

    def update(self, n: int) -> None:
        self.advance(n)
        now = time.monotonic()
        if now - self.drawn >= 0.1:
            self.drawn = now
            self.refresh()


class _StatusLine:
    """Rendered anew at each refresh, so the elapsed time ticks between the server's answers."""

    def __init__(self, state: JobState):
        from rich.spinner import Spinner

        self.state = state
        self.spinner = Spinner("dots", style="cyan")  # one: its frame follows the clock

    def __rich__(self) -> Any:
        self.spinner.update(text=state_words(self.state))
        return self.spinner
