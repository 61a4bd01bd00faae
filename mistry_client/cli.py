"""`mistry`: build (upstream's flags), status, logs, cancel, ls, verify and batch. Exit codes are in
mistry_client.errors; what people see (status line, summary) is mistry_client.ui."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .build_command import run_build
from .durations import format_duration, positive_duration
from .errors import (
    EXIT_BUILD_FAILED,
    EXIT_OK,
    EXIT_UNFINISHED,
    EXIT_USAGE,
    BuildTimeout,
    exit_code_of,
)
from .options import (
    BUILD_OPTIONS,
    CHOICE,
    DURATION,
    FLAG,
    FOLDER,
    MANY,
    PORT,
    PORT_RANGE,
    SERVER_OPTIONS,
    TOKEN,
    Option,
)
from .params import ParamError, parse_params
from .terminal import plain_text, terminal_safe_keeping_colours

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from .api import Client

# the Client and the transports are imported when a command needs them, so that `--help`,
# `--version` and usage errors answer without loading an HTTP stack
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
            return positive_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _remember_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["mistry.token"] = value or None


def _token() -> str | None:
    """The command's --token (or MISTRY_TOKEN), if any."""
    return click.get_current_context().meta.get("mistry.token")


def _client(host: str, port: int) -> Client:
    """A Client for the command being run, with its --token (or MISTRY_TOKEN) if any."""
    from .api import Client

    try:
        return Client(host, port, token=_token())
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--host'") from None


_COMPLETIONS = {"projects": _complete_projects}


def _click_option(option: Option):
    """The click option of an entry of options.py."""
    kind = option.kind
    settings: dict[str, Any] = {"help": option.help, "show_default": option.show_default,
                                "envvar": option.envvar, "required": option.required,
                                "metavar": option.metavar}
    if kind == FLAG:
        settings["is_flag"] = True
    elif kind == MANY:
        settings["multiple"] = True
    else:
        if option.default is not None:  # (click takes an explicit None as a value given)
            settings["default"] = option.default
        settings["type"] = {PORT: click.IntRange(*PORT_RANGE), DURATION: Duration(),
                            FOLDER: click.Path(file_okay=False)}.get(kind)
        if kind == CHOICE:
            settings["type"] = click.Choice(option.choices)
    if kind == TOKEN:
        # not passed to the command function: `_token` reads it, so every command with the
        # server options sends it without a parameter of its own
        settings.update(expose_value=False, callback=_remember_token)
    if option.complete:
        settings["shell_complete"] = _COMPLETIONS[option.complete]
    return click.option(*option.flags, option.name, **settings)


def _options(options: tuple[Option, ...]):
    def decorate(f):
        for option in reversed(options):  # click lists them in the order they are given here
            f = _click_option(option)(f)
        return f
    return decorate


_server_options = _options(SERVER_OPTIONS)


class _Mistry(click.Group):
    """Turns a ClientError from any command into its message and exit code, in one place."""

    def invoke(self, ctx: click.Context):
        code = exit_code_of(lambda: super(_Mistry, self).invoke(ctx))
        if code is not None:
            ctx.exit(code)


@click.group(cls=_Mistry, context_settings=CONTEXT)
@click.version_option(package_name="mistryd", prog_name="mistry")
def main() -> None:
    """mistry: ask a mistryd server for a build and fetch its artifacts."""


@main.command(context_settings=CONTEXT)
@_options(BUILD_OPTIONS)
@click.argument("params", nargs=-1, type=click.UNPROCESSED, metavar="[-- --KEY VALUE ...]")
def build(host, port, params, **options):
    """Build PROJECT on the server and fetch its artifacts into --target.

    Params follow `--`: `--key value`, `--key=value` or `key=value`; a value `@file` is that
    file's content.
    """
    try:
        build_params = parse_params(params)
    except ParamError as e:
        raise click.UsageError(str(e)) from None
    run_build(_client(host, port), _token(), build_params=build_params, **options)


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
