# The two commands the README opens with: `make demo` and `make test`.
# Both set up .venv first (torch==2.13.0 is the local CPU build; see pyproject.toml).

VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 50051
HTTP_PORT ?= 8000

.PHONY: setup demo serve test lint protos bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m dataplane.native   # build the CPU kernels for this machine
	touch $@

setup: $(VENV)/.installed

# Start the stack on the default tiny model, stream one generation, stop the stack.
demo: setup
	@set -e; \
	$(VENV)/bin/apex serve --port $(PORT) --http-port $(HTTP_PORT) & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid' EXIT; \
	for i in $$(seq 1 600); do \
	  $(VENV)/bin/apexctl --address 127.0.0.1:$(PORT) --timeout 1 status >/dev/null 2>&1 && break; \
	  kill -0 $$pid 2>/dev/null || exit 1; sleep 0.5; \
	done; \
	$(VENV)/bin/apexctl --address 127.0.0.1:$(PORT) generate "Once upon a time" \
	  --max-tokens 48 --temperature 0.8 --seed 1; \
	echo; echo "--- the same stack through the OpenAI-compatible HTTP API (chat):"; \
	curl -sS http://127.0.0.1:$(HTTP_PORT)/v1/chat/completions -H 'Content-Type: application/json' \
	  -d '{"model": "tiny", "max_tokens": 32, "seed": 1, "messages": [{"role": "user", "content": "Tell me a story."}]}'; \
	echo; $(VENV)/bin/apexctl --address 127.0.0.1:$(PORT) status

serve: setup
	$(VENV)/bin/apex serve --port $(PORT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers, each file on one (a module's stack starts once): most tests wait on
# processes they started, so a second worker fills the idle core of a 2-core machine.
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

protos: setup
	$(PY) protos/regen.py

bench: setup
	$(PY) -m benchmarks.engine_vs_hf
	$(PY) -m benchmarks.cpu_attention
	$(PY) -m benchmarks.dataplane_roundtrip
