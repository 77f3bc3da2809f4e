# The two commands a newcomer needs: `make run` and `make test`. Both build .venv on their own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-stress venv clean proto proto-check bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	mkdir -p .agentd
	$(BIN)/agentd run -c etc/agentd.example.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The fast loop: tests/unit only (no processes, no sockets to other processes; about 20 s).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

# The whole suite with every core kept busy (stress-ng, installed if missing): run it before submitting.
test-stress: $(STAMP)
	tests/under_load.sh $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# bench/lifecycle.py against supervisord and circus (about 10 min); writes its table into docs/performance.md.
# The anchors (the `bench` extra) go into their own environment without agentd: supervisord's package is
# also called `supervisor`, so the two cannot share one. agentd runs from .venv as always.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))" > $(BENCH_VENV)/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet -r $(BENCH_VENV)/requirements.txt
	touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/lifecycle.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .agentd .pytest_cache

# Regenerate supervisor/wire/proto/*_pb2*.py from the .proto files (committed; CI checks they match).
proto: $(STAMP)
	$(BIN)/python -m supervisor.wire.proto.generate

proto-check: $(STAMP)
	$(BIN)/python -m supervisor.wire.proto.generate --check
