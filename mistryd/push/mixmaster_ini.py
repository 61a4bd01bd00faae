"""Mixmaster's INI file (`mixmaster_config`, usually ~/.config/mixmaster.ini) read as it is and
merged into the JSON config at load time, so a Mixmaster user starts with the file they have.

The format, as Mixmaster reads it: `key = value` lines, `;` or `#` comments, keys before the
first section belong to `[_]`. `[_]` holds the settings (`sshKey`, `mode = dryrun`, `mailto`;
`mailcommand`, `buildRoot` and `spool` are Mixmaster's own plumbing and are ignored); every other
section is a repository (`[org/repo]`) whose keys are branch rules and values the commands.

Settings in the JSON config win: a JSON `ssh_key`, `dry_run` or `notify` replaces the INI's, and
a repository in `repositories` (in any case) replaces the INI section of that name. Repositories
from the INI run in the default push project. Whatever is wrong in the file is a ConfigError
naming the file, the line and the section."""

from __future__ import annotations

import configparser
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from pydantic import TypeAdapter, ValidationError

from ..config import Repositories, _config_error
from ..errors import ConfigError

SETTINGS = "_"
_TOP = "mistryd: keys before the first section"  # a section name no INI file can have
IGNORED = ("mailcommand", "buildRoot", "spool")  # how Mixmaster itself ran: mistryd has its own
KNOWN = ("sshKey", "mode", "mailto", "hook", *IGNORED)
MODES = {"dryrun": True, "normal": False}
_REPOSITORIES: TypeAdapter = TypeAdapter(Repositories)


@dataclass
class MixmasterFile:
    path: Path
    settings: dict[str, str] = field(default_factory=dict)
    repositories: dict[str, dict[str, str]] = field(default_factory=dict)  # section -> rules
    lines: dict[str, int] = field(default_factory=dict)  # section or setting -> its line

    def where(self, name: str) -> str:
        """`FILE, line N, [section]` for a message."""
        line = self.lines.get(name)
        if name in self.repositories:
            return f"{self.path}, line {line}, section [{name}]"
        return f"{self.path}, line {line}, [{SETTINGS}] {name}" if line else str(self.path)


def read(path: Path) -> MixmasterFile:
    """The file parsed; ConfigError (key `mixmaster_config`) naming the line of a problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _error(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    parser = _CaseKeeping(delimiters=("=",), comment_prefixes=(";", "#"),
                                       inline_comment_prefixes=None, interpolation=None,
                                       empty_lines_in_values=False, default_section="\0none")
    try:  # keys before the first section: a header of our own, one line above line 1
        # Mixmaster's keys may be indented; configparser would read that as a continuation
        parser.read_string(f"[{_TOP}]\n" + "\n".join(line.lstrip() for line in text.splitlines()),
                           source=str(path))
    except configparser.DuplicateSectionError as e:
        raise _error(f"{path}, line {_line(e.lineno)}: section [{e.section}] appears twice") \
            from None
    except configparser.DuplicateOptionError as e:
        raise _error(f"{path}, line {_line(e.lineno)}, section [{_shown(e.section)}]: "
                     f"{e.option} appears twice") from None
    except configparser.ParsingError as e:
        lineno = _line(e.errors[0][0])
        line = text.splitlines()[lineno - 1] if 0 < lineno <= len(text.splitlines()) else ""
        raise _error(f"{path}, line {lineno}: {line.strip()[:80]!r} is not "
                     "`key = value`, a [section] or a comment") from None
    except configparser.Error as e:
        raise _error(f"{path}: {e.message}") from None
    found = MixmasterFile(path, lines=_header_lines(text))
    for section in parser.sections():
        values = {k: v.strip() for k, v in parser.items(section)}
        if section in (_TOP, SETTINGS):
            found.settings.update(values)
        else:
            found.repositories[section] = values
    for key in found.settings:
        found.lines.setdefault(key, _key_line(text, key))
    _check_settings(found)
    return found


def merged(raw: dict, base: Path) -> dict:
    """The JSON config `raw` (its paths relative to `base`) with its `mixmaster_config` read in.
    A config without one is returned as it is."""
    name = raw.get("mixmaster_config")
    if not isinstance(name, str) or not name:
        return raw  # absent, or a type the config's own check refuses
    found = read(base / Path(name).expanduser())
    out = dict(raw)
    s = found.settings
    if "ssh_key" not in raw and s.get("sshKey"):
        key = found.path.parent / Path(s["sshKey"]).expanduser()
        if not key.is_file():
            raise _error(f"{found.where('sshKey')}: {key} is not a file")
        out["ssh_key"] = str(key)
    if "dry_run" not in raw and s.get("mode"):
        out["dry_run"] = MODES[s["mode"]]
    if "notify" not in raw and s.get("mailto"):
        out["notify"] = [mail_url(s["mailto"])]
    out["repositories"] = _repositories(found, raw.get("repositories"))
    return out


def mail_url(mailto: str) -> str:
    """Mixmaster mailed `mailto` through the machine's own mail system (sendmail): the same
    here is an Apprise mailto URL for the local SMTP server."""
    to = ",".join(a.strip() for a in mailto.split(",") if a.strip())
    sender = f"mistryd@{socket.getfqdn() or 'localhost'}"
    return f"mailto://localhost:25/?to={quote(to, safe='@,')}&from={quote(sender, safe='@')}"


def _repositories(found: MixmasterFile, configured: object) -> object:
    if configured is not None and not isinstance(configured, dict):
        return configured  # the config's own check says what is wrong
    configured = dict(configured or {})
    taken = {name.lower() for name in configured}
    for name, rules in found.repositories.items():
        if name.lower() in taken:
            continue  # the JSON config's repository wins
        try:
            checked = _REPOSITORIES.validate_python({name: {"branches": rules}})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            said = _config_error(err)
            problem = said.message.removeprefix(f"config: {said.key}: ")
            if err["loc"][-1] == "branches" and not rules:
                problem = "has no branch rules (`branch = command` lines)"
            elif len(err["loc"]) == 2:  # the name itself, without a key below it
                problem = (f"[{name}] is not a repository like [example-org/example-repo]"
                           if name != "hooks" else _HOOKS)
            raise _error(f"{found.where(name)}: {problem}") from None
        configured[name] = {"branches": dict(checked[name].branches)}
    return configured


_HOOKS = ("Mixmaster's hook scripts are not run by mistryd: remove the section and give "
          "`notify` (Apprise URLs) in the JSON config instead")


def _check_settings(found: MixmasterFile) -> None:
    for key, value in found.settings.items():
        if key not in KNOWN:
            raise _error(f"{found.where(key)}: unknown setting (known: {', '.join(KNOWN)})")
        if key == "mode" and value and value not in MODES:
            raise _error(f"{found.where(key)}: mode must be dryrun or normal, got {value!r}")
        if key == "hook" and value:
            raise _error(f"{found.where(key)}: {_HOOKS}")


class _CaseKeeping(configparser.ConfigParser):
    """Keys keep their case (`sshKey`), as Mixmaster reads them."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _header_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            lines.setdefault(stripped[1:-1], number)
    return lines


def _key_line(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.split("=", 1)[0].strip() == key:
            return number
    return 0


def _line(lineno: int | None) -> int:
    return (lineno or 1) - 1  # our header took line 1


def _shown(section: str) -> str:
    return SETTINGS if section == _TOP else section


def _error(problem: str) -> ConfigError:
    return ConfigError("mixmaster_config", problem)

