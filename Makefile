# The two commands a newcomer needs: `make run` and `make test`. Both build .venv on their own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-stress venv clean proto proto-check

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

# The whole suite with every core kept busy (stress-ng, installed if missing): run it before submitting.
test-stress: $(STAMP)
	tests/under_load.sh $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .agentd .pytest_cache

# Regenerate supervisor/proto/*_pb2*.py from the .proto files (committed; CI checks they match).
proto: $(STAMP)
	$(BIN)/python -m supervisor.proto.generate

proto-check: $(STAMP)
	$(BIN)/python -m supervisor.proto.generate --check
