"""The benchmark harness: `python -m bench` (or `make bench`). See docs/performance.md."""
