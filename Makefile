# stylevid — `make demo` and `make test` work on a fresh clone with only the package registries.
# GPU users: create the environment with the CUDA build of torch first (or point VENV at one);
# the install step keeps any torch that is already importable.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.stylevid-installed

.PHONY: install demo test test-slow bench toy-world toy-report clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The toy world's trained models (model=toy), offline: a red circle moving right, in the sunset style, with the
# default style sharing (method.sharing=aligned; method.sharing=paper is eqs. 7-9 as written, which leave the toy
# model's colours as they are: README, "The toy world").
demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/stylevid generate method=stylet2v0 model=toy \
		prompt="a red circle moving right" style=examples/styles/sunset.png \
		frames=8 steps=20 seed=0 save_frames=true

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-slow: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

bench: install
	HF_HUB_OFFLINE=1 $(PY) scripts/benchmark_t2v.py

toy-world: install
	$(PY) scripts/build_toy_world.py --stage all

toy-report: install
	HF_HUB_OFFLINE=1 $(PY) scripts/toy_report.py

clean:
	rm -rf $(VENV) build *.egg-info
