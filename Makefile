# Newcomer entry points (see README.md):
#   make demo   - set up .venv (torch, deps, the C++/CUDA extension) and run the embedded demo
#   make test   - set up if needed and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is a CUDA 13.0 build (CUDA kernels compile and link even without a GPU).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')
PYTEST_ARGS ?= -q

.PHONY: setup demo test bench-cpu gpu-suite clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q av pyyaml tqdm numpy h5py matplotlib pillow pytest hypothesis pytest-benchmark
	touch $@

# Builds video3d_fast/_C (CPU kernels, plus CUDA kernels when nvcc is found) and installs the package.
$(VENV)/.built: $(VENV)/.deps setup.py $(CSRC)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "from video3d_fast import ops; [print(f'  backend {s.name:7s}', 'ok' if s.available else s.reason) for s in ops.available_backends().values()]"
	touch $@

setup: $(VENV)/.built

demo: setup
	$(VENV)/bin/video3d-fast demo

test: setup
	VIDEO3D_FAST_REQUIRE_EXTENSION=1 $(PY) -m pytest $(PYTEST_ARGS)

bench-cpu: setup
	$(PY) benchmarks/bench_cpu_ops.py

gpu-suite:
	bash benchmarks/gpu_suite.sh

clean:
	rm -rf build video3d_fast/_C*.so *.egg-info
