# MedSAMSegment: `make setup`, `make test`, `make demo`, `make bench`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build is taken from local disk here; on a GPU machine set e.g. TORCH_SPEC="torch==2.13.0"
# with the CUDA index of your choice.
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done

SLICER_API_CHECK := ../shared/tools/slicer_api/check.py

.PHONY: setup test lint slicer-api demo bench screenshots clean

setup: $(STAMP)

$(STAMP): client/pyproject.toml server/pyproject.toml server/requirements-sam2.txt Testing/requirements-slicer.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	# medsam-server depends on medsam-client (the torch-free client, ../client): both editable
	$(PIP) install -e client -e "server[test,ray,video]"
	SAM2_BUILD_CUDA=0 $(PIP) install --no-deps --no-build-isolation --require-hashes \
		-r server/requirements-sam2.txt
	$(PY) -c "import sys, sam2.modeling.sam2_base; assert 'torchvision' not in sys.modules"
	$(PIP) install -r Testing/requirements-slicer.txt
	touch $(STAMP)

test: setup lint slicer-api
	$(PY) -m pytest Testing

# Every Slicer/MRML/VTK/Qt/CTK name the Slicer side uses must exist in Slicer's API.
slicer-api:
	@test -f $(SLICER_API_CHECK) || { echo "missing $(SLICER_API_CHECK) (../shared beside the repo)"; exit 1; }
	python3 $(SLICER_API_CHECK) MedSAMSegment

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) bench/bench_engine.py

screenshots: setup
	$(PY) scripts/render_screenshots.py
	$(PY) scripts/render_echo.py

clean:
	rm -rf $(VENV) out
