# Every command the README mentions. `make book` and `make test` create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
RUNS ?= runs
OUT ?= book
CH ?=
ARGS ?=
PYTEST_ARGS ?=
export RSBOOK_BENCH ?= $(CURDIR)/benchmarks/results/latest.json

.PHONY: venv book chapter test bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

venv: $(VENV)/.installed

book: venv
	$(PY) tools/book.py build --profile $(PROFILE) --runs $(RUNS) --out $(OUT)

chapter: venv
	@test -n "$(CH)" || { echo 'usage: make chapter CH=<name> [PROFILE=smoke|default|full] [ARGS="-p sigma 0.5"]' >&2; exit 2; }
	$(PY) tools/book.py build --profile $(PROFILE) --runs $(RUNS) --out $(OUT) --chapter $(CH) $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench_certify.py --out $(RSBOOK_BENCH)

clean:
	if [ -x $(PY) ]; then $(PY) tools/book.py clean --runs $(RUNS) --out $(OUT); else rm -rf $(OUT)/_build; fi
	rm -rf .pytest_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
