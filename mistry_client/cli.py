"""Placeholder until the client lands (issue 3)."""

import sys


def main() -> None:
    sys.exit("mistry: the client is not built yet")
