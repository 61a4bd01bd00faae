"""mistryd: a build server that never does the same build twice."""

__version__ = "0.1.0"
