PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test lint train eval bench demo reproduce reproduce-quick clean

install:  ## one command: fresh virtual environment + package + test tools
	python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[dev]"

test:
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint:  ## ruff (installed by the dev extra; configuration in pyproject.toml)
	$(PY) -m ruff check src tests scripts benchmarks

train:
	$(PY) -m captionless3d.train

CKPT ?= all
BASELINES ?= [pointclip]
EVAL_ARGS ?=
eval:  ## one table, a row per model: the newest best.ckpt of every experiment + baselines (EVAL_ARGS: more overrides, e.g. baseline.ulip_pointbert.pretrained=<file>)
	$(PY) -m captionless3d.eval ckpt=$(CKPT) baseline=$(BASELINES) $(EVAL_ARGS)

BENCH_ARGS ?=
bench:  ## every benchmark, numbers only (make bench BENCH_ARGS=--quick for small sizes)
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

REPRO_ARGS ?=
REPRO_OUT ?= outputs/reproduce
reproduce:  ## baseline, I2I, (I2L)^2, AVG x 5 paired seeds + the paired comparison (about 85 min on 2 CPU cores, warm caches); resumes in $(REPRO_OUT)/full; REPRO_ARGS="--write-doc docs/x.md"
	$(PY) scripts/reproduce_table.py --preset full --out $(REPRO_OUT)/full $(REPRO_ARGS)

reproduce-quick:  ## baseline vs AVG, one seed (about 9 min with warm caches); resumes in $(REPRO_OUT)/quick
	$(PY) scripts/reproduce_table.py --preset quick --out $(REPRO_OUT)/quick $(REPRO_ARGS)

DEMO_ARGS ?=
demo:  ## local demo page on http://127.0.0.1:8765 for the newest best.ckpt (make demo DEMO_ARGS="--ckpt C --port 8000")
	$(PY) -m captionless3d.demo $(DEMO_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
