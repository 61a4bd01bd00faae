"""One root exception; each subclass knows its HTTP status, so the web layer maps them once."""


class MistryError(Exception):
    """An error a user can act on. The message names the thing and, where there is one, the fix."""

    status = 500
    retry_after: int | None = None  # seconds after which asking again may work (Retry-After)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(MistryError):
    status = 400


class NotFound(MistryError):
    status = 404


class Conflict(MistryError):
    status = 409


class Unprocessable(MistryError):
    """Well-formed, but this thing cannot be done (too many artifacts, an unreadable tree)."""

    status = 422


class UnknownProject(NotFound):
    def __init__(self, project: str):
        super().__init__(f"Unknown project '{project}'")
        self.project = project


class Overloaded(MistryError):
    status = 503

    def __init__(self, retry_after: int = 5):
        super().__init__("Server is overloaded; try again later")
        self.retry_after = retry_after


class InsufficientStorage(MistryError):
    status = 507


class ShuttingDown(MistryError):
    status = 503

    def __init__(self):
        super().__init__("Server is shutting down; try again later")
        self.retry_after = 5


class ConfigError(MistryError):
    """A bad configuration: one line naming the key and the problem."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config: {key}: {problem}")
        self.key = key


class Unavailable(MistryError):
    """The server cannot take this request now (its index could not be written: a busy or full
    disk); nothing was started, and asking again later may work."""

    status = 503
    retry_after: int

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class DockerUnavailable(MistryError):
    """The Docker engine does not answer. Builds fail with this line until it does; cache hits
    and pages do not need it."""

    status = 503


class DockerRefused(MistryError):
    """The Docker engine answered a request of ours with an error (its own message)."""

    status = 502


class ProjectChanged(Conflict):
    """The project folder no longer holds what the job's key was computed from: building it now
    would tag an image with a fingerprint that does not match its content."""

    def __init__(self, project: str, when: str):
        super().__init__(f"project {project} changed {when}; request it again")
        self.project = project
