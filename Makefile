# The two commands a new user needs: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
SITE ?= deploy/examples/compound.yaml

.PHONY: bootstrap demo test lint unit bench clean

bootstrap:
	@./scripts/bootstrap

demo: bootstrap
	$(PY) -m gateway.demo $(SITE)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: bootstrap
	$(PY) bench/poll.py
	$(PY) bench/planner.py
	$(PY) bench/sink.py
	$(PY) bench/rules.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
