#!/usr/bin/env bash
# The one prepared GPU check, under 5 minutes on one CUDA GPU:
#   1. the CUDA cases of the test suite (the tests parametrized over devices run a `cuda` case
#      when torch sees a GPU; `-k cuda` selects them);
#   2. the population benchmark at packs 1024 and 4096, tanh n=128, on the GPU, then the same
#      rows on the CPU (fewer steps), printing stream-steps/s and the GPU/CPU ratio per row.
# It needs only torch and numpy (the numerics never import Ray, Optuna or MLflow): a machine
# with a CUDA torch runs it from a checkout, installed or not.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR (default .): gpu_check.json, logs
#
# Exit status: pytest's when the CUDA tests fail, 2 when no GPU is visible, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# A checkout that is not installed: make `rnnsweep.*` importable from a link farm.
if ! "$PY" -c "import rnnsweep.algorithms" 2>/dev/null; then
    farm=$(mktemp -d)
    mkdir -p "$farm/rnnsweep"
    for part in algorithms tasks benchmarks; do ln -s "$PWD/$part" "$farm/rnnsweep/$part"; done
    export PYTHONPATH="$farm${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device" >&2
    exit 2
fi
"$PY" -c "import torch; print('gpu:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"

echo "== CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" -k cuda tests/test_kf_rtrl.py tests/test_rflo.py \
    2>&1 | tee "$out/gpu_tests.log"
tests_status=${PIPESTATUS[0]}

echo "== population benchmark, n=128, packs 1024 and 4096"
bench="-m rnnsweep.benchmarks.population --json --hidden 128 --packs 1024 4096 --estimators uoro nobacktrack --repeats 1 --sample 4"
timeout 150 "$PY" $bench --device cuda --steps 200 --memory > "$out/gpu_population.json"
timeout 150 "$PY" $bench --device cpu --steps 10 --threads "$(nproc)" > "$out/cpu_population.json"
"$PY" - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
gpu = json.load(open(f"{out}/gpu_population.json"))["rows"]
cpu = {(r["estimator"], r["hidden"], r["pack"]): r for r in json.load(open(f"{out}/cpu_population.json"))["rows"]}
rows = []
for r in gpu:
    c = cpu.get((r["estimator"], r["hidden"], r["pack"]))
    ratio = r["stream_steps_per_sec"] / c["stream_steps_per_sec"] if c else float("nan")
    rows.append({"estimator": r["estimator"], "hidden": r["hidden"], "pack": r["pack"],
                 "gpu_stream_steps_per_sec": r["stream_steps_per_sec"],
                 "cpu_stream_steps_per_sec": c["stream_steps_per_sec"] if c else None,
                 "gpu_over_cpu": ratio,
                 "gpu_peak_bytes_per_member": r.get("peak_bytes_per_member")})
    print(f"{r['estimator']:<12} n={r['hidden']} pack={r['pack']:<5} "
          f"gpu {r['stream_steps_per_sec']:>14.0f} stream-steps/s   "
          f"cpu {rows[-1]['cpu_stream_steps_per_sec'] or float('nan'):>12.0f}   ratio {ratio:.1f}x   "
          f"gpu peak {r.get('peak_bytes_per_member', float('nan')) / 1024:.1f} KiB/member")
json.dump({"rows": rows}, open(f"{out}/gpu_check.json", "w"), indent=2)
EOF
exit "$tests_status"
