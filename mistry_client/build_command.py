"""`mistry build` itself, once its command line is read (by click in cli.py, or by quick.py
without it): submit, wait, fetch, and what people see meanwhile. Nothing here loads click."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .durations import format_duration
from .errors import EXIT_BUILD_FAILED, EXIT_OK, BuildTimeout, ClientError, TransferError
from .terminal import plain_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import Client, Submitted
    from .ui import Output


def run_build(client: Client, token: str | None, *, project: str, group: str, target: str,
              transport: str, transport_user: str | None, transport_port: int | None,
              transport_args: tuple[str, ...], no_wait: bool, explain: bool, rebuild: bool,
              clear_target: bool, keep_special_bits: bool, timeout: float, verbose: bool,
              json_result: bool, build_params: dict[str, str]) -> None:
    """Builds `project` with `build_params` (or explains, or only submits) and fetches its
    artifacts into `target`; ends with sys.exit where the outcome is not success."""
    deadline = time.monotonic() + timeout
    from .ui import cached_note, make_output

    if explain:
        answer = client.explain(project, build_params, group, deadline)
        _print(json.dumps(answer, indent=2) if json_result else explanation(answer, client))
        sys.exit(EXIT_OK)
    out = make_output(json_result)
    _interrupt_on_sigterm()  # so a killed download still removes its staging folder
    try:
        try:  # --timeout bounds submitting and waiting, not the artifact download after it
            job = client.submit(project, build_params, group, rebuild, deadline)
            url = client.url(job.url)
            if no_wait:
                out.say(f"Build scheduled; see {url}")
                if json_result:
                    _print(json.dumps({"ID": job.id, "URL": job.url, "Cached": job.cached}))
                sys.exit(EXIT_OK)
            # at once: the page shows the build live. With -v the log pushes this line out of
            # sight, so upstream's line comes again after the log, where upstream prints it
            out.say(f"Build {project}/{job.id[:12]}: {url}" if verbose
                    else f"Logs can be found at {url}")
            if job.cached:
                out.note(cached_note(job.info))
            elif job.joined:
                out.note("Joined a build of the same request that was already under way")
            if job.info is not None and not verbose and not json_result:
                info = job.info  # a cache hit: its record came with the answer, no log to follow
            else:
                info = _wait(client, out, project, job, verbose, deadline)
        except BuildTimeout:
            raise BuildTimeout(f"The build did not finish after {format_duration(timeout)}") \
                from None
        if job.cached:  # the stored record says how it was built, not how it was answered
            info["Cached"] = True
        if verbose:
            out.say(f"Logs can be found at {url}")
        if info.get("ExitCode") != 0:
            if json_result:
                _print(json.dumps(info, indent=2))
            out.outcome(info, job.joined)
            out.error(f"Build failed with exit code {info.get('ExitCode')}")
            detail = info.get("ContainerStderr") or info.get("ErrBuild") or ""
            if detail:
                out.error_detail(detail)
            sys.exit(EXIT_BUILD_FAILED)
        transporter = _transport(client, token, transport, transport_user, transport_port,
                                 transport_args, progress=out.download_bar if out.live else False,
                                 keep_special_bits=keep_special_bits)
        fetch_started = time.monotonic()
        try:
            fetched = transporter.fetch(info, Path(target), clear_target)
        except OSError as e:  # the target side: a folder that cannot be made or written
            where = f" ({e.filename})" if e.filename else ""
            raise TransferError(f"the artifacts could not be written to {target}: "
                                f"{e.strerror or e}{where}") from None
        if fetched is not None:
            fetched.seconds = time.monotonic() - fetch_started
        if json_result:
            _print(json.dumps(info, indent=2))
        out.outcome(info, job.joined)
        out.fetched(fetched, Path(target), transport)
    except ClientError as e:
        out.error(e.message)
        sys.exit(e.exit_code)


def explanation(answer: dict, client: Client) -> str:
    """GET /jobs/explain's answer for people: the summary, then one line per difference."""
    def q(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)[:80]

    lines = [f"{answer.get('Project')}/{str(answer.get('ID'))[:12]}: {answer.get('Summary')}"]
    nearest = answer.get("Nearest") or {}
    if nearest.get("URL"):
        group = f" (group {nearest.get('Group')})" if nearest.get("Group") else ""
        lines.append(f"  nearest cached build: {client.url(str(nearest['URL']))}{group}")
    differences = answer.get("Differences") or {}
    for f in differences.get("Files") or []:
        lines.append(f"  file {f.get('Path')}: {f.get('Change')}")
    shown, changed = len(differences.get("Files") or []), differences.get("FilesChanged") or 0
    if changed > shown:
        lines.append(f"  ... and {changed - shown} more files")
    for p in differences.get("Params") or []:
        if p.get("Opaque"):
            lines.append(f"  param {p.get('Name')}: {p.get('Change')} (opaque: not part of the "
                         "key)")
        else:
            lines.append(f"  param {p.get('Name')}: {p.get('Change')} ({q(p.get('Was'))} -> "
                         f"{q(p.get('Now'))})")
    if differences.get("Group"):
        g = differences["Group"]
        lines.append(f"  group: {q(g.get('Was'))} -> {q(g.get('Now'))}")
    return "\n".join(plain_text(line) for line in lines)


def _wait(client: Client, out: Output, project: str, job: Submitted, verbose: bool,
          deadline: float) -> dict:
    """Follow the build's log to its end (printing it with -v); on a terminal, with a status
    line that a second connection keeps current. A cached build's log is its recorded one, and
    is shown as such, never as if it were live."""
    import contextlib

    from .watch import JobState, Watcher

    state = JobState(joined=job.joined)
    if verbose and job.cached:
        out.note("Its recorded log (from when it was built; not live):")

    def on_line(line: str) -> None:
        state.running()
        if verbose:
            out.log_line(line, recorded=job.cached)

    with contextlib.ExitStack() as live:
        if out.live and not job.cached:
            live.enter_context(Watcher(client, project, job.id, state))
            live.enter_context(out.waiting(state))
        return client.wait(project, job.id, on_line=on_line, deadline=deadline)


def _interrupt_on_sigterm() -> None:
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _transport(client, token, name, user, port, extra, progress, keep_special_bits):
    from .transports import HttpTransport, RsyncTransport, ScpTransport

    if name == "rsync":
        return RsyncTransport(client.host, user, port, extra, token=token,
                              keep_special_bits=keep_special_bits)
    if name == "scp":
        return ScpTransport(client.host, user, port, extra)
    return HttpTransport(client, progress=progress, keep_special_bits=keep_special_bits)


def _print(text: str) -> None:
    print(text, flush=True)
