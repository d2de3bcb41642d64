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
PYTEST_WORKERS ?= 2
export RSBOOK_BENCH ?= $(CURDIR)/benchmarks/results/latest.json

REHEARSE_RUNS ?= $(RUNS)/rehearse
COMPUTING := cohen_rerun relax fars ancer

.PHONY: venv book chapter test bench plan rehearse clean

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
	@test -n "$(CH)" || { echo 'usage: make chapter CH=<name> [PROFILE=smoke|default|full|paper-sample] [ARGS="-p sigma 0.5"]' >&2; exit 2; }
	$(PY) tools/book.py build --profile $(PROFILE) --runs $(RUNS) --out $(OUT) --chapter $(CH) $(ARGS)

# One torch (OpenMP) thread per pytest-xdist worker unless OMP_NUM_THREADS says otherwise: the workers share
# the cores, and two threads per worker on two cores made the suite 1.3x slower (823 s against 638 s).
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench_certify.py --out $(RSBOOK_BENCH)

# Every training and certification step of the computing chapters at PROFILE, its time on this machine's
# devices (measured throughput) and whether it is done; writes $(RUNS)/plan-$(PROFILE).json. Runs nothing.
plan: venv
	$(PY) -m rsbook.book.plan --profile $(PROFILE) --runs $(RUNS)

# The full profile's path (steps as rsbook commands through torchrun: one process per GPU, or 2 gloo
# processes on a CPU) of every computing chapter at the smoke sizes, into $(REHEARSE_RUNS); then make bench.
rehearse: venv
	device=$$($(PY) -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'); \
	devices=$$(if [ "$$device" = cuda ]; then echo auto; else echo 2; fi); \
	for chapter in $(COMPUTING); do \
		$(PY) tools/book.py execute --profile smoke --runs $(REHEARSE_RUNS) --chapter $$chapter \
			-p launch true -p devices $$devices -p device $$device || exit 1; \
	done
	$(PY) -c 'import json, sys; from pathlib import Path; \
	times = {c: json.loads((Path(sys.argv[1]) / c / "smoke" / "build.json").read_text())["seconds"] for c in sys.argv[2:]}; \
	print("rehearsal: " + ", ".join(f"{c} {s:.0f} s" for c, s in times.items()) + f"; {sum(times.values()):.0f} s in all")' \
		$(REHEARSE_RUNS) $(COMPUTING)
	$(MAKE) bench

clean:
	if [ -x $(PY) ]; then $(PY) tools/book.py clean --runs $(RUNS) --out $(OUT); else rm -rf $(OUT)/_build; fi
	rm -rf .pytest_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
