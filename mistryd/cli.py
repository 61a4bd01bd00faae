"""`mistryd`: serve (the default), and `rebuild`. Errors print one line and exit 2 (bad usage or
config) or 1 (the work itself failed)."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading

import click

from . import __version__
from .config import Config, load
from .errors import ConfigError, MistryError

EXIT_USAGE = 2


def _config_options(f):
    f = click.option("--filesystem", type=click.Choice(["auto", "btrfs", "plain"]),
                     help="Storage adapter; auto picks btrfs when build_path is on Btrfs.")(f)
    f = click.option("--addr", help="HOST:PORT to listen on (default 127.0.0.1:8462).")(f)
    f = click.option("--config", "config_path", envvar="MISTRYD_CONFIG",
                     type=click.Path(dir_okay=False), help="The JSON config file.")(f)
    return f


def _load(ctx: click.Context, config_path, addr, filesystem) -> Config:
    parent = ctx.find_root().params
    config_path = config_path or parent.get("config_path")
    addr = addr or parent.get("addr")
    filesystem = filesystem or parent.get("filesystem")
    if not config_path:
        raise click.UsageError("--config FILE is required (try --config config.sample.json)")
    try:
        return load(config_path, addr=addr, filesystem=filesystem)
    except ConfigError as e:
        click.echo(f"mistryd: {e.message}", err=True)
        sys.exit(EXIT_USAGE)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_config_options
@click.version_option(__version__, prog_name="mistryd")
@click.pass_context
def main(ctx: click.Context, config_path, addr, filesystem):
    """mistryd: a build server that never does the same build twice.

    With no command it serves the HTTP API and web view.
    """
    if ctx.invoked_subcommand is None:
        serve(_load(ctx, config_path, addr, filesystem))


def serve(config: Config) -> None:
    """The whole server: with builder processes (the default) a supervisor and its API workers
    and builders (mistryd/supervisor.py); else one process that serves and builds."""
    from .gc import startup_disk_problem
    from .server import Server
    from .web.auth import startup_warning
    from .web.http import listen

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if problem := startup_disk_problem(config.build_path):
        click.echo(f"mistryd: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    if config.builder_processes:  # builds are counted where they run: /metrics adds them up
        from .layout import Layout
        from .metrics import share_between_processes

        share_between_processes(Layout(config.build_path).state_dir() / "metrics")
    try:
        server = Server(config)
        # the port first, then build_path's lock, and only then recovery: a second `mistryd`
        # must not touch the first one's builds before it finds out that it cannot serve
        listener = listen(config)
        if config.builder_processes:
            server.take_build_path()
            server.recover()
        else:
            server.start()
    except MistryError as e:
        click.echo(f"mistryd: {e.message}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        click.echo(f"mistryd: config: addr: {config.addr} is already in use (another mistryd? "
                   "see `ss -ltnp`); choose another with --addr", err=True)
        sys.exit(EXIT_USAGE)
    rsyncd = _start_rsyncd(config, server)
    log = logging.getLogger("mistryd")
    log.info(access_control_line(config))
    if warning := startup_warning(config):
        log.warning(warning)
    where = f"http://{config.host}:{listener.getsockname()[1]}/"
    try:
        if config.builder_processes:
            from .supervisor import Supervisor

            click.echo(f"mistryd {__version__} listening on {where} (storage: "
                       f"{server.storage.name}; {config.api_processes} API and "
                       f"{config.builder_processes} builder process(es))", err=True)
            Supervisor(config, server, listener).run()
        else:
            click.echo(f"mistryd {__version__} listening on {where} (storage: "
                       f"{server.storage.name})", err=True)
            _serve_here(config, server, listener)
    finally:
        if rsyncd is not None:
            rsyncd.stop()
        server.release_build_path()


def _serve_here(config: Config, server, listener) -> None:
    """One process serves and builds (`builder_processes` = 0)."""
    from .web import create_app
    from .web.http import make_http_server, stop_http_server

    http = make_http_server(create_app(server), config, sock=listener)

    def shut_down() -> None:
        """New builds get 503 while running ones finish (their waiters are still answered);
        then the HTTP server closes."""
        server.stop()
        stop_http_server(http)

    def on_signal(signum, frame):
        if not shutting_down.is_set():
            shutting_down.set()
            logging.getLogger("mistryd").warning(
                "mistryd: stopping; running builds get %ss to finish", config.shutdown_grace)
            threading.Thread(target=shut_down, name="mistryd-shutdown", daemon=True).start()

    shutting_down = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        http.run()
    finally:
        if not shutting_down.is_set():
            server.stop()


def access_control_line(config: Config) -> str:
    """The start-up line that says who may do what (token names, never the tokens)."""
    if not config.tokens:
        return ("mistryd: access control off: no tokens in the config, every client that reaches "
                f"{config.addr} may build, cancel and read")
    names = ", ".join(f"{t.name} ({t.role})" for t in config.tokens)
    anonymous = "may read" if config.anonymous_read else "are refused"
    return (f"mistryd: access control on: {len(config.tokens)} token(s): {names}; requests "
            f"without a token {anonymous}")


def _start_rsyncd(config: Config, server):
    """The read-only rsync daemon of config `rsync_addr`, or None when it is off. With tokens
    (and no anonymous reads) it asks for a login: a token's name and the token."""
    if config.rsync_addr is None:
        return None
    from .config import split_addr
    from .rsyncd import RsyncDaemon, rsync_users, upstream_client_misreads

    host, port = split_addr(config.rsync_addr)
    try:
        users = rsync_users(config.tokens) if config.tokens and not config.anonymous_read else None
        rsyncd = RsyncDaemon(config.build_path, host, port, users)
        rsyncd.start()
    except RuntimeError as e:
        server.stop()
        click.echo(f"mistryd: config: rsync_addr: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if misread := upstream_client_misreads(config.build_path, server.projects.names()):
        logging.getLogger("mistryd").warning(
            "mistryd: build_path %s contains the name of project(s) %s: upstream's client cuts "
            "its rsync path at that name's first occurrence and asks for a wrong path; move "
            "build_path or rename them (mistry's own client is not affected)", config.build_path,
            ", ".join(misread))
    return rsyncd


@main.command()
@_config_options
@click.option("--project", "projects", multiple=True, help="A project to rebuild (repeatable); "
              "default: all.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first image that fails to build.")
@click.option("--verbose", "-v", is_flag=True, help="Show docker's build output.")
@click.pass_context
def rebuild(ctx, config_path, addr, filesystem, projects, fail_fast, verbose):
    """Rebuild project images without Docker's layer cache, then prune this server's old images
    (never those of another mistryd on the same engine)."""
    from .docker_runner import DockerRunner, ImageBuildError
    from .errors import DockerRefused, DockerUnavailable
    from .projects import Projects

    config = _load(ctx, config_path, addr, filesystem)
    known = Projects(config.projects_path)
    names = list(projects) or known.names()
    try:
        paths = {name: known.path(name) for name in names}
    except MistryError as e:
        click.echo(f"mistryd: {e.message} (projects_path={config.projects_path})", err=True)
        sys.exit(EXIT_USAGE)
    runner = DockerRunner(config)
    failed = []
    for name, path in paths.items():
        click.echo(f"Rebuilding {name}...", err=True)
        tag = runner.image_tag(name, known.fingerprint(name))
        try:  # under the project's limits and build_timeout, as the server builds it
            runner.build_image(name, path, tag, _Console(verbose), nocache=True,
                               pull=config.pull_base, settings=config.for_project(name))
        except (ImageBuildError, DockerRefused) as e:
            failed.append(name)
            click.echo(f"mistryd: the image of '{name}' did not build: {e}", err=True)
            if fail_fast:
                break
        except DockerUnavailable as e:  # no other project would build either
            click.echo(f"mistryd: {e.message}", err=True)
            sys.exit(1)
    runner.prune_images()
    if failed:
        click.echo(f"Failed: {', '.join(failed)}", err=True)
        sys.exit(1)
    click.echo(f"Rebuilt {len(paths)} image(s).", err=True)


@main.command()
@_config_options
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.pass_context
def gc(ctx, config_path, addr, filesystem, dry_run):
    """Remove builds over max_build_bytes or older than max_build_age now, least recently used
    first (safe while the server runs)."""
    import sqlite3

    from .gc import collect

    config = _load(ctx, config_path, addr, filesystem)
    if config.max_build_bytes is None and config.max_build_age is None:
        click.echo("Nothing to do: set max_build_bytes or max_build_age in the config.")
        return
    try:
        report = collect(config, dry_run=dry_run)
    except (OSError, sqlite3.Error, MistryError) as e:  # MistryError: an index newer than this code
        click.echo(f"mistryd: gc: cannot collect in build_path={config.build_path}: {e}", err=True)
        sys.exit(1)
    for line in report.lines():
        click.echo(line)


@main.command()
@click.option("--queue", "queue_url", required=True, envvar="MISTRYD_QUEUE",
              help="The shared queue: redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS).")
@click.option("--server", "server_url", required=True, envvar="MISTRYD_SERVER",
              help="The central server: http://HOST:PORT (results and logs go there).")
@click.option("--build-path", required=True, type=click.Path(file_okay=False),
              help="This builder's own folder for builds and caches (Btrfs makes caches cheap).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=None,
              help="Builds at once (default: one per CPU).")
@click.option("--name", default=None, help="This builder's name (default: the host name).")
@click.option("--label", "labels", multiple=True,
              help="A label this builder has (repeatable): it takes jobs of projects whose "
              "`labels` it has, every one.")
@click.option("--token", envvar="MISTRYD_TOKEN", default=None,
              help="A token with role `builder` on the central server (or MISTRYD_TOKEN).")
@click.option("--filesystem", type=click.Choice(["auto", "btrfs", "plain"]), default="auto")
@click.option("--grace", type=click.FloatRange(0), default=30,
              help="Seconds running builds get to finish on SIGTERM before they are cancelled.")
def worker(queue_url, server_url, build_path, concurrency, name, labels, token, filesystem,
           grace):
    """A builder on this machine for a central mistryd with a shared queue: it takes jobs from
    the queue, builds them in Docker here and sends the results to the central server."""
    import os
    import socket

    from .config import QUEUE_URL, label_problem

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s [worker %(process)d] %(levelname)s %(message)s")
    name = name or socket.gethostname()
    for value, what in [(name, "--name"), *((label, "--label") for label in labels)]:
        if problem := label_problem(value):
            raise click.BadParameter(problem, param_hint=what)
    if not QUEUE_URL.fullmatch(queue_url):
        raise click.BadParameter("must be redis://HOST:PORT/DB (or rediss:// for TLS)",
                                 param_hint="--queue")
    if not server_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be http://HOST:PORT or https://HOST", param_hint="--server")
    try:
        from .remote.worker import RemoteBuilder, run_worker

        builder = RemoteBuilder(queue_url, server_url.rstrip("/"), build_path,
                                concurrency or os.cpu_count() or 1, name, tuple(labels), token,
                                filesystem)
    except ImportError as e:
        click.echo(f"mistryd: worker: {e.name} is missing: pip install 'mistryd[redis]'", err=True)
        sys.exit(EXIT_USAGE)
    except MistryError as e:
        click.echo(f"mistryd: worker: {e.message}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"mistryd {__version__} worker {name}: queue {_safe_url(queue_url)}, central "
               f"server {server_url}", err=True)
    sys.exit(run_worker(builder, grace))


def _safe_url(url: str) -> str:
    """A queue URL without its password, for the log."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class _Console:
    """Where `rebuild` sends docker's output: the terminal with --verbose, else nowhere."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def write(self, data: bytes, stream: str = "") -> None:
        if self.verbose:
            sys.stderr.write(data.decode("utf-8", "replace"))

    def line(self, text: str, stream: str = "") -> None:
        self.write((text + "\n").encode())


if __name__ == "__main__":
    main()
