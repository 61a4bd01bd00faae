"""The mistry client: the `mistry` command and a small Python API."""
