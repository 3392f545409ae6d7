# Two entry points; each installs what it needs on first use (see scripts/bootstrap.sh).
VENV ?= .venv
RUNS ?= results

.PHONY: run test bench setup

setup:
	@./scripts/bootstrap.sh

run: setup  ## open the cockpit; press n to train Stage 1 on the embedded corpus
	@$(VENV)/bin/kssm-tui $(RUNS)

test: setup  ## the whole test suite (CPU, about 5 minutes on 2 cores)
	@$(VENV)/bin/python -m pytest -q

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(VENV)/bin/python $$f --quick || exit 1; done
