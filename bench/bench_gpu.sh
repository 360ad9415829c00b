#!/usr/bin/env bash
# One command on a lent GPU machine: set up .venv-gpu (CUDA torch from PyPI's default index,
# this checkout's client and server, Meta's sam2 pinned by sha256 as `make setup` installs it),
# then run bench/bench_gpu.py (stock SAM2 vs ours in bf16, 300 slices of 512², first-box
# latency, peak GPU memory), then bench/bench_time.py on the GPU (the echo clip along time).
# Arguments go to bench_gpu.py, e.g. --json gpu.json.
#
#   bench/bench_gpu.sh [--slices 300] [--encode-batch 8] [--json out.json]
#   MEDSAM_BENCH_PYTHON=/path/to/python bench/bench_gpu.sh   # an environment that has it all
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels bench/bench_gpu.sh   # offline, from a wheel folder
#   MEDSAM_BENCH_TIME_ARGS="--device cpu --frames 3" MEDSAM_BENCH_PYTHON=.venv/bin/python \
#       bench/bench_gpu.sh --device cpu --slices 3               # smoke run of both on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV="${MEDSAM_BENCH_VENV:-.venv-gpu}"
PY="${MEDSAM_BENCH_PYTHON:-}"
if [[ -z "$PY" ]]; then
    PY="$VENV/bin/python"
    if [[ ! -f "$VENV/.setup-done" ]]; then
        echo "bench_gpu: setting up $VENV ($TORCH_SPEC from PyPI, CUDA build on Linux)" >&2
        test -x "$PY" || python3 -m venv "$VENV"
        PIP=("$PY" -m pip --disable-pip-version-check -q)
        "${PIP[@]}" install --upgrade pip setuptools wheel
        "${PIP[@]}" install "$TORCH_SPEC"
        "${PIP[@]}" install -e client -e server
        # as the Makefile: no deps (sam2's metadata would pull torchvision), no CUDA extension
        SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-deps --no-build-isolation --require-hashes \
            -r server/requirements-sam2.txt
        touch "$VENV/.setup-done"
    fi
fi
"$PY" -c "import torch, sys; print(f'bench_gpu: torch {torch.__version__}, CUDA ' \
    f'{torch.version.cuda}, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else None}', file=sys.stderr)"
"$PY" bench/bench_gpu.py "$@"
# the time run: frames/s through the 120-frame echo clip, stock video predictor vs ours
# (fp32, bf16), on the GPU (MEDSAM_BENCH_TIME_JSON names a JSON file for it;
# MEDSAM_BENCH_TIME_ARGS adds options, later ones win: e.g. "--frames 40")
read -r -a TIME_ARGS <<< "${MEDSAM_BENCH_TIME_ARGS:-}"
exec "$PY" bench/bench_time.py --device cuda ${MEDSAM_BENCH_TIME_JSON:+--json "$MEDSAM_BENCH_TIME_JSON"} \
    "${TIME_ARGS[@]}"
