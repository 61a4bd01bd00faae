"""Push-triggered builds (issue 13, docs/push.md): webhooks -> branch rules -> a JobRequest on the
same key, cache, coalescing, queue and log as every build; the git work on the host; the command
with `sh -c` in the checkout."""

from .builds import PushBuilds
from .jobspec import DEFAULT_PROJECT

__all__ = ["DEFAULT_PROJECT", "PushBuilds"]
