"""`mistry`: build (upstream's flags), status, logs, cancel, ls, verify and batch. Exit codes are in
mistry_client.errors; what people see (status line, summary) is mistry_client.ui."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .address import FORMS
from .durations import format_duration, parse_duration
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_BUILD_FAILED,
    EXIT_OK,
    EXIT_UNFINISHED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BuildTimeout,
    ClientError,
    TransferError,
    connection_problem,
)
from .params import ParamError, parse_params
from .terminal import plain_text, terminal_safe_keeping_colours

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from .api import Client, Submitted
    from .ui import Output

# the Client and the transports are imported when a command needs them, so that `--help`,
# `--version` and usage errors answer without loading an HTTP stack
TRANSPORTS = ("http", "rsync", "scp")  # one class each in transports.py

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "timed-out", "abandoned")


def _complete_projects(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from .completion import project_names

    return project_names(ctx, incomplete)


def _complete_project_or_id(ctx: click.Context, param: click.Parameter,
                            incomplete: str) -> list[CompletionItem]:
    from .completion import projects_and_ids

    return projects_and_ids(ctx, incomplete)


def _complete_id(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
    from .completion import build_ids

    return build_ids(ctx, incomplete, project=ctx.params.get("project") or "")


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return seconds


def _remember_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["mistry.token"] = value or None


def _client(host: str, port: int) -> Client:
    """A Client for the command being run, with its --token (or MISTRY_TOKEN) if any."""
    from .api import Client

    try:
        return Client(host, port, token=click.get_current_context().meta.get("mistry.token"))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--host'") from None


def _server_options(f):
    # --token is not passed to the command function (expose_value=False): `_client` reads it,
    # so every command with these options sends it without a parameter of its own
    f = click.option("--token", envvar="MISTRY_TOKEN", expose_value=False,
                     callback=_remember_token, metavar="TOKEN",
                     help="API token of a server with access control, sent as a bearer header "
                     "(env MISTRY_TOKEN).")(f)
    f = click.option("--port", "-p", type=click.IntRange(1, 65535), default=8462,
                     envvar="MISTRY_PORT", show_default=True, help="mistryd's port "
                     "(env MISTRY_PORT).")(f)
    f = click.option("--host", default="127.0.0.1", envvar="MISTRY_HOST", show_default=True,
                     help=f"mistryd's host: {FORMS}; a port given here wins over --port "
                     "(env MISTRY_HOST).")(f)
    return f


class _Mistry(click.Group):
    """Turns a ClientError from any command into its message and exit code, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ClientError as e:
            click.echo(e.message, err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:  # `mistry logs ... | head`: the reader has what it wanted
            # stdout is gone: point it at /dev/null so the interpreter's final flush is quiet,
            # and end as a command killed by SIGPIPE would
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as e:
            # a read the client did not wrap: still one line (wire is loaded if it raised)
            wire = sys.modules.get("mistry_client.wire")
            if wire is None or not isinstance(e, wire.WireError):
                raise
            click.echo(f"lost the connection to mistryd: {connection_problem(e)}", err=True)
            ctx.exit(EXIT_UNREACHABLE)


@click.group(cls=_Mistry, context_settings=CONTEXT)
@click.version_option(package_name="mistryd", prog_name="mistry")
def main() -> None:
    """mistry: ask a mistryd server for a build and fetch its artifacts."""


@main.command(context_settings=CONTEXT)
@click.option("--project", required=True, help="The project to build.",
              shell_complete=_complete_projects)
@click.option("--group", "-g", default="", help="The group: builds of a group share /data/cache.")
@click.option("--target", "-t", default=".", show_default=True, type=click.Path(file_okay=False),
              help="The folder the artifacts land in (the current one by default, as upstream's "
              "client; the summary names it).")
@_server_options
@click.option("--transport", type=click.Choice(TRANSPORTS), default="http", show_default=True,
              help="How artifacts are fetched: http (verified), rsync (daemon) or scp (ssh).")
@click.option("--transport-user", default=None, help="User name for rsync/scp (rsync to a "
              "server with tokens: the token's name; the token is the password).")
@click.option("--transport-port", type=click.IntRange(1, 65535), default=None,
              envvar="MISTRY_TRANSPORT_PORT",
              help="Port of the rsync daemon (873) or sshd (22). Not in upstream.")
@click.option("--transport-arg", "transport_args", multiple=True,
              help="An extra argument for rsync/scp (repeatable), e.g. --transport-arg=-F "
              "--transport-arg=ssh_config. Not in upstream.")
@click.option("--no-wait", is_flag=True, help="Only schedule the build; do not wait or fetch.")
@click.option("--explain", is_flag=True, help="Build nothing: say whether this request is "
              "cached, queued or running, and what differs from the nearest cached build.")
@click.option("--rebuild", is_flag=True, help="Build again even when a result is cached, and "
              "rebuild the image.")
@click.option("--clear-target", is_flag=True, help="Empty the target folder first.")
@click.option("--keep-special-bits", is_flag=True, help="Keep setuid, setgid and sticky bits of "
              "downloaded files (by default files get their permission bits only).")
@click.option("--timeout", type=Duration(), default="60m", show_default=True,
              help="How long to wait for the build, from the start of the command; the "
              "artifact download comes after it (Go durations: 90s, 5m, 1h30m).")
@click.option("--verbose", "-v", is_flag=True, help="Stream the build log while waiting.")
@click.option("--json-result", is_flag=True, help="Print the BuildInfo JSON on stdout, "
              "and nothing else there.")
@click.argument("params", nargs=-1, type=click.UNPROCESSED, metavar="[-- --KEY VALUE ...]")
def build(project, group, target, host, port, transport, transport_user, transport_port,
          transport_args, no_wait, explain, rebuild, clear_target, keep_special_bits, timeout,
          verbose, json_result, params):
    """Build PROJECT on the server and fetch its artifacts into --target.

    Params follow `--`: `--key value`, `--key=value` or `key=value`; a value `@file` is that
    file's content.
    """
    deadline = time.monotonic() + timeout
    try:
        build_params = parse_params(params)
    except ParamError as e:
        raise click.UsageError(str(e)) from None
    from .ui import cached_note, make_output

    client = _client(host, port)
    if explain:
        answer = client.explain(project, build_params, group, deadline)
        click.echo(json.dumps(answer, indent=2) if json_result else explanation(answer, client))
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
                    click.echo(json.dumps({"ID": job.id, "URL": job.url, "Cached": job.cached}))
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
                click.echo(json.dumps(info, indent=2))
            out.outcome(info, job.joined)
            out.error(f"Build failed with exit code {info.get('ExitCode')}")
            detail = info.get("ContainerStderr") or info.get("ErrBuild") or ""
            if detail:
                out.error_detail(detail)
            sys.exit(EXIT_BUILD_FAILED)
        transporter = _transport(client, transport, transport_user, transport_port,
                                 transport_args, progress=out.download_bar if out.live else False,
                                 keep_special_bits=keep_special_bits)
        fetch_started = time.monotonic()
        try:
            fetched = transporter.fetch(info, Path(target), clear_target)
        except OSError as e:  # the target side: a folder that cannot be made or written
            raise TransferError(f"the artifacts could not be written to {target}: "
                                f"{e.strerror or e} ({e.filename})") from None
        if fetched is not None:
            fetched.seconds = time.monotonic() - fetch_started
        if json_result:
            click.echo(json.dumps(info, indent=2))
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


def _transport(client, name, user, port, extra, progress, keep_special_bits):
    from .transports import HttpTransport, RsyncTransport, ScpTransport

    if name == "rsync":
        token = click.get_current_context().meta.get("mistry.token")
        return RsyncTransport(client.host, user, port, extra, token=token,
                              keep_special_bits=keep_special_bits)
    if name == "scp":
        return ScpTransport(client.host, user, port, extra)
    return HttpTransport(client, progress=progress, keep_special_bits=keep_special_bits)


def log_printer(colours: bool) -> Callable[[str], None]:
    """Prints one line of a build's log: in a pipe plain text, the build's escape sequences
    removed whole; with `colours`, its colour codes (and only those) kept."""
    clean = terminal_safe_keeping_colours if colours else plain_text

    def print_line(line: str) -> None:
        click.echo(clean(line), color=colours)  # click would strip them in a pipe

    return print_line


def _build_command(f):
    """A command about one build: `mistry <command> [options] [PROJECT] ID`, where ID may be a
    unique prefix of the build's id (then PROJECT may be left out)."""
    f = click.argument("build_id", metavar="ID", required=False, shell_complete=_complete_id)(f)
    f = click.argument("project", metavar="[PROJECT]", shell_complete=_complete_project_or_id)(f)
    return main.command(context_settings=CONTEXT)(_server_options(f))


def _the_build(client: Client, project: str, build_id: str | None) -> tuple[str, str]:
    """(project, whole id) from the command's arguments: `PROJECT ID` or just `ID`."""
    from .build_ids import resolve

    if build_id is None:  # one argument: the id (or its start), of any project
        return resolve(client, None, project)
    return resolve(client, project, build_id)


@_build_command
@click.option("--json/--no-json", "as_json", default=None,
              help="JSON (the default when the output is not a terminal, for scripts) or a "
              "summary for people (the default on a terminal).")
def status(host, port, as_json, project, build_id):
    """Show a build's state. Exit 0 when it succeeded, 1 when it failed (or was cancelled,
    timed out, abandoned), 7 while it is queued or running."""
    from .ui import is_terminal, make_output

    client = _client(host, port)
    project, build_id = _the_build(client, project, build_id)
    view = client.job(project, build_id)
    info = dict(view.get("BuildInfo") or {})
    info.pop("ContainerStdouterr", None)  # the log is what `mistry logs` is for
    view["BuildInfo"] = info or None
    if as_json is None:
        as_json = not is_terminal(sys.stdout)
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        make_output(False).status(view, client.url(f"job/{project}/{build_id}"))
    if view.get("Status") == "succeeded":
        sys.exit(EXIT_OK)
    sys.exit(EXIT_UNFINISHED if view.get("Status") in ("queued", "running") else EXIT_BUILD_FAILED)


@_build_command
def cancel(host, port, project, build_id):
    """Cancel a queued or running build; everyone waiting for it gets the outcome."""
    client = _client(host, port)
    project, build_id = _the_build(client, project, build_id)
    info = client.cancel(project, build_id)
    click.echo(f"Cancelled {project}/{build_id}: {info.get('ErrBuild') or info.get('Status')}")


@_build_command
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the build ends.")
@click.option("--color/--no-color", "colour", default=None,
              help="Keep the log's own colours (--color: also in a pipe, for `less -R`) or drop "
              "them; by default kept on a terminal unless NO_COLOR is set. Only colour codes "
              "ever pass: cursor moves and other sequences are removed.")
def logs(host, port, follow, colour, project, build_id):
    """Print a build's log (with -f: follow it live until the build ends)."""
    from .ui import log_colours

    client = _client(host, port)
    project, build_id = _the_build(client, project, build_id)
    print_line = log_printer(log_colours(colour, sys.stdout))
    if follow:
        client.follow_log(project, build_id, on_line=print_line)
        return
    view = client.job(project, build_id)
    if view.get("State") == "ready":
        text = (view.get("BuildInfo") or {}).get("ContainerStdouterr") or ""
        for line in text.removesuffix("\n").split("\n") if text else ():
            print_line(line)
    else:  # running: what is there so far, then stop
        _print_log_so_far(client, project, build_id, print_line)


def _print_log_so_far(client: Client, project: str, build_id: str,
                      print_line: Callable[[str], None]) -> None:
    # the stream of a running build never ends by itself: read until it goes quiet briefly
    try:
        client.follow_log(project, build_id, on_line=print_line,
                          deadline=time.monotonic() + 1.0)
    except BuildTimeout:
        pass


@main.command(context_settings=CONTEXT)
@click.option("--project", required=True, help="The project of the cached build.",
              shell_complete=_complete_projects)
@click.option("--group", "-g", default="", help="Its group.")
@click.option("--no-image-cache", is_flag=True, help="Build the image again without Docker's "
              "layer cache too.")
@click.option("--timeout", type=Duration(), default="60m", show_default=True,
              help="How long to wait for the rebuild and the comparison.")
@click.option("--json", "as_json", is_flag=True, help="The server's answer as JSON.")
@_server_options
@click.argument("params", nargs=-1, type=click.UNPROCESSED, metavar="[-- --KEY VALUE ...]")
def verify(project, group, no_image_cache, timeout, as_json, host, port, params):
    """Build the cached build of a request again and compare its artifacts: exit 0 when they
    are identical, 1 when some differ (they are listed) or the rebuild failed.

    The request is `mistry build`'s (params after `--`); the server records the outcome on the
    cached build (Reproducible) and removes the rebuild."""
    try:
        build_params = parse_params(params)
    except ParamError as e:
        raise click.UsageError(str(e)) from None
    client = _client(host, port)
    try:
        answer = client.verify(project, build_params, group, image_cache=not no_image_cache,
                               deadline=time.monotonic() + timeout)
    except BuildTimeout:
        raise BuildTimeout(f"The verification did not finish after {format_duration(timeout)}; "
                           "it goes on, and its outcome is recorded on the build") from None
    click.echo(json.dumps(answer, indent=2) if as_json else verification(answer, client))
    sys.exit(EXIT_OK if answer.get("Reproducible") is True else EXIT_BUILD_FAILED)


def verification(answer: dict, client: Client) -> str:
    """POST /jobs/verify's answer for people: the summary, then one line per differing entry."""
    def side(entry: dict | None) -> str:
        if not entry:
            return "-"
        if entry.get("Type") == "file":
            return f"{entry.get('Size')} bytes sha256 {str(entry.get('Sha256'))[:16]}"
        if entry.get("Type") == "symlink":
            return f"link to {entry.get('Target')}"
        return f"{entry.get('Type')} mode {entry.get('Mode')}"

    lines = [f"{answer.get('Project')}/{str(answer.get('ID'))[:12]}: {answer.get('Summary')}",
             f"  build: {client.url(str(answer.get('URL')))}"]
    for d in answer.get("Differences") or []:
        lines.append(f"  {d.get('Path')}: {d.get('Change')} (cached: {side(d.get('Cached'))}; "
                     f"rebuilt: {side(d.get('Rebuilt'))})")
    shown, total = len(answer.get("Differences") or []), answer.get("DifferencesCount") or 0
    if total > shown:
        lines.append(f"  ... and {total - shown} more")
    if answer.get("LogTail"):
        lines.append("  the end of the rebuild's log:")
        lines += ["    " + line for line in str(answer["LogTail"]).splitlines()[-20:]]
    return "\n".join(plain_text(line) for line in lines)


@main.command(context_settings=CONTEXT)
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every job has ended, printing each job's changes, or answer at "
              "once with the batch's id.")
@click.option("--timeout", type=Duration(), default="60m", show_default=True,
              help="How long to wait for the whole batch.")
@click.option("--json", "as_json", is_flag=True, help="The server's answer as JSON (with "
              "--wait: the batch as it ended).")
@_server_options
@click.argument("file", type=click.File("r"), metavar="FILE.json")
def batch(wait, timeout, as_json, host, port, file):
    """Ask for builds in dependency order (docs/batches.md). FILE.json (`-`: standard input) is
    `{"jobs": [...]}` or just the list, each job a build request with a `name` and the names of
    the jobs it `needs`. Exit 0 when every job succeeded, 1 when one did not (its dependents
    are skipped), 7 when --timeout passed first (the batch goes on)."""
    try:
        body = json.load(file)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="FILE.json") from None
    jobs = body.get("jobs") if isinstance(body, dict) else body
    client = _client(host, port)
    created = client.submit_batch(jobs)
    url = client.url(f"batches/{created['id']}")
    if not wait:
        click.echo(json.dumps(created, indent=2) if as_json else f"{created['id']} {url}")
        return
    if not as_json:
        click.echo(f"batch {created['id']}: {url}")
    deadline, view = time.monotonic() + timeout, client.batch(created["id"])
    seen: dict[str, str | None] = {}
    while True:
        for name, job in view["jobs"].items():
            if not as_json and seen.get(name) != job.get("status"):
                reason = f" ({job['reason']})" if job.get("reason") else ""
                click.echo(plain_text(f"{name}: {job.get('status')}{reason}"))
            seen[name] = job.get("status")
        if view["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(1)
        view = client.batch(created["id"])
    if as_json:
        click.echo(json.dumps(view, indent=2))
    elif view["status"] == "running":
        click.echo(f"the batch did not end within {format_duration(timeout)}; it goes on: {url}",
                   err=True)
    else:
        click.echo(f"batch {view['status']}")
    sys.exit({"succeeded": EXIT_OK, "running": EXIT_UNFINISHED}.get(view["status"],
                                                                     EXIT_BUILD_FAILED))


@main.command("ls", context_settings=CONTEXT)
@click.option("--project", default="", help="Only this project's builds.",
              shell_complete=_complete_projects)
@click.option("--status", default=None, type=click.Choice(STATUSES), metavar="STATUS",
              help=f"Only builds with this status: {', '.join(STATUSES)}.")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="The index entries as JSON.")
@_server_options
def list_builds(project, status, limit, as_json, host, port):
    """List builds, newest first: id (12 characters, enough for every command), project,
    status, start, duration, group."""
    rows = _client(host, port).index(limit=limit, project=project, status=status or "")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from .ui import build_rows, make_output

    out = make_output(False)
    if not rows:
        of = f" of project {project!r}" if project else ""
        out.say(f"No {status} builds{of}" if status else f"No builds{of}")
        return
    out.table(["ID", "PROJECT", "STATUS", "STARTED", "DURATION", "GROUP"], build_rows(rows),
              status_column=2)


def run() -> None:  # pragma: no cover - for `python -m mistry_client.cli`
    main()


if __name__ == "__main__":
    try:
        main()
    except click.UsageError as e:  # pragma: no cover
        e.show()
        sys.exit(EXIT_USAGE)
