# Two commands on a fresh machine: `make run` and `make test`. Both set up what is missing first:
# `make run` only what serving needs, `make test` the test tools as well (scripts/setup.sh).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-run run test bench lint image clean

setup:
	@bash scripts/setup.sh test

setup-run:
	@bash scripts/setup.sh run

run: setup-run
	.venv/bin/mistryd --config config.sample.json

# pytest exits 5 when it collected no tests: that is a failure too.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) -m bench

# ruff, then mypy on mistryd and mistry_client ([tool.mypy] in pyproject.toml says what and how)
lint: setup
	.venv/bin/ruff check mistryd mistry_client tests bench
	.venv/bin/mypy

# the container image of mistryd itself (deploy/Dockerfile; docs/deploy.md)
image: setup-run
	@bash deploy/build-image.sh

clean:
	rm -rf var/builds test-output
