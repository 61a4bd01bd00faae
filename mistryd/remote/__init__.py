"""Builders on other machines: the worker (`mistryd worker`), its registry and what it sends
to and fetches from the central server (docs/distributed.md)."""
