# MedSAMSegment: `make setup`, `make test`, `make demo`, `make bench`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build is taken from local disk here; on a GPU machine set e.g. TORCH_SPEC="torch==2.13.0"
# with the CUDA index of your choice.
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): server/pyproject.toml server/requirements-sam2.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e "server[test]"
	SAM2_BUILD_CUDA=0 $(PIP) install --no-deps --no-build-isolation --require-hashes \
		-r server/requirements-sam2.txt
	$(PY) -c "import sys, sam2.modeling.sam2_base; assert 'torchvision' not in sys.modules"
	touch $(STAMP)

test: setup lint
	$(PY) -m pytest Testing

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) out
