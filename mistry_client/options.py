"""The options of `mistry build` and the server options every command has, as data: cli.py makes
click options of them, and quick.py reads a plain `mistry build` line with them without loading
click. One list, so the two cannot drift apart."""

from __future__ import annotations

from .address import FORMS

TRANSPORTS = ("http", "rsync", "scp")  # one class each in transports.py
PORT_RANGE = (1, 65535)

# kinds of value: what the option takes and how its text becomes the value
TEXT = "text"
FLAG = "flag"  # no value: False, or True when given
PORT = "port"  # an integer in PORT_RANGE
CHOICE = "choice"  # one of `choices`
DURATION = "duration"  # a positive Go duration, in seconds
FOLDER = "folder"  # a path that is not a file
MANY = "many"  # text, repeatable: a tuple of every value given
TOKEN = "token"  # text the command does not take as a parameter: the client sends it


class Option:
    """One option: its flags (long first), the name of its parameter, its kind, its default
    (text is converted as a command line's would be), the environment variable that stands in for
    it, whether it is required, its help text, and which completion it has (cli.py)."""

    __slots__ = ("flags", "name", "kind", "default", "envvar", "required", "choices", "help",
                 "show_default", "complete", "metavar")

    def __init__(self, *flags: str, name: str = "", kind: str = TEXT, default: object = None,
                 envvar: str | None = None, required: bool = False,
                 choices: tuple[str, ...] = (), help: str = "", show_default: bool = False,
                 complete: str | None = None, metavar: str | None = None):
        self.flags = flags
        self.name = name or flags[0].lstrip("-").replace("-", "_")
        self.kind = kind
        self.default = False if kind == FLAG else () if kind == MANY else default
        self.envvar = envvar
        self.required = required
        self.choices = choices
        self.help = help
        self.show_default = show_default
        self.complete = complete
        self.metavar = metavar


SERVER_OPTIONS = (
    Option("--host", default="127.0.0.1", envvar="MISTRY_HOST", show_default=True,
           help=f"mistryd's host: {FORMS}; a port given here wins over --port (env MISTRY_HOST)."),
    Option("--port", "-p", kind=PORT, default=8462, envvar="MISTRY_PORT", show_default=True,
           help="mistryd's port (env MISTRY_PORT)."),
    Option("--token", kind=TOKEN, envvar="MISTRY_TOKEN", metavar="TOKEN",
           help="API token of a server with access control, sent as a bearer header "
           "(env MISTRY_TOKEN)."),
)

BUILD_OPTIONS = (
    Option("--project", required=True, help="The project to build.", complete="projects"),
    Option("--group", "-g", default="", help="The group: builds of a group share /data/cache."),
    Option("--target", "-t", kind=FOLDER, default=".", show_default=True,
           help="The folder the artifacts land in (the current one by default, as upstream's "
           "client; the summary names it)."),
    *SERVER_OPTIONS,
    Option("--transport", kind=CHOICE, choices=TRANSPORTS, default="http", show_default=True,
           help="How artifacts are fetched: http (verified), rsync (daemon) or scp (ssh)."),
    Option("--transport-user", help="User name for rsync/scp (rsync to a server with tokens: the "
           "token's name; the token is the password)."),
    Option("--transport-port", kind=PORT, envvar="MISTRY_TRANSPORT_PORT",
           help="Port of the rsync daemon (873) or sshd (22). Not in upstream."),
    Option("--transport-arg", name="transport_args", kind=MANY,
           help="An extra argument for rsync/scp (repeatable), e.g. --transport-arg=-F "
           "--transport-arg=ssh_config. Not in upstream."),
    Option("--no-wait", kind=FLAG, help="Only schedule the build; do not wait or fetch."),
    Option("--explain", kind=FLAG, help="Build nothing: say whether this request is cached, "
           "queued or running, and what differs from the nearest cached build."),
    Option("--rebuild", kind=FLAG, help="Build again even when a result is cached, and rebuild "
           "the image."),
    Option("--clear-target", kind=FLAG, help="Empty the target folder first."),
    Option("--keep-special-bits", kind=FLAG, help="Keep setuid, setgid and sticky bits of "
           "downloaded files (by default files get their permission bits only)."),
    Option("--timeout", kind=DURATION, default="60m", show_default=True,
           help="How long to wait for the build, from the start of the command; the artifact "
           "download comes after it (Go durations: 90s, 5m, 1h30m)."),
    Option("--verbose", "-v", kind=FLAG, help="Stream the build log while waiting."),
    Option("--json-result", kind=FLAG, help="Print the BuildInfo JSON on stdout, and nothing "
           "else there."),
)
