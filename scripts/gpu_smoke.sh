#!/usr/bin/env bash
# The GPU smoke: one command, run from the repository root on a bare GPU machine (../shared/spec/GPU.md §3: Python
# 3.12 with torch, no registry, the project not installed), about 5 minutes and at most ~8 on one H100.
#
#   bash scripts/gpu_smoke.sh            (python3; PYTHON=… to use another interpreter)
#
# Installs the wheels of .whl/ (`make gpu-wheels` downloads them) into a scratch folder with pip --no-index, then
# runs each step under a timeout and prints `== STEP: PASS (Ns)` or `== STEP: FAIL (rc)` with its key figures:
#   pytest        python3 -m pytest -q tests/gpu                 (CUDA tests: syncs, fused SDPA, numerics, kernels)
#   sample-data   gemma4 sample-data … --rows 12                 (the main job, end to end, on the GPU:)
#   preprocess    gemma4 preprocess …
#   infer         gemma4 infer … --device cuda                   (the checkpoint's stored dtype, float32)
#   infer-bf16    gemma4 infer … --device cuda --dtype bfloat16
#   bench         gemma4 bench generate --device cuda --size e2b --batch 1 --batch 8 …   ($BENCH_ARGS overrides)
# Each step's whole log goes to $OUT when it is set (the device tool brings $OUT's files back: at most 8, so the
# job's own outputs stay in a scratch folder), else to the scratch folder. Ends with a summary table and
# `GPU SMOKE: PASS` (exit 0) or `GPU SMOKE: FAIL (steps …)` (exit 1); without a CUDA device it prints
# `GPU SMOKE: SKIP (no CUDA device)` and exits 0. Every step runs even when an earlier one failed (set -u, not
# -e), except the job steps after a failed job step. SMOKE_BUDGET_S (default 450) bounds the steps' total time.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON=${PYTHON:-python3}
BUDGET=${SMOKE_BUDGET_S:-450}
BENCH_ARGS=${BENCH_ARGS:---size e2b --batch 1 --batch 8 --prompt 1024 --new-tokens 64 --repeat 2}
STARTED=$(date +%s)

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "($PYTHON: $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "sees no CUDA device")' 2>&1 | tail -n 1))"
    echo "GPU SMOKE: SKIP (no CUDA device)"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gemma4-gpu-smoke.XXXXXX")
LOGS=${OUT:-$WORK/logs}
mkdir -p "$LOGS"
SUMMARY=$LOGS/summary.txt
export PYTHONUNBUFFERED=1
# tqdm bars and log lines of the jobs: figures only in what is printed here (the logs keep everything)
figures() { tr '\r' '\n' <"$1" | grep -Ev '[0-9]+%\||^\s*$' | tail -n "$2"; }

{
    echo "== machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "(no nvidia-smi)"
    "$PYTHON" - <<'EOF' 2>&1
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}), {torch.cuda.get_device_name()} "
      f"(sm{''.join(map(str, torch.cuda.get_device_capability()))}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB)")
EOF
} | tee "$SUMMARY"

declare -a ROWS=() FAILED=()
record() {  # step, result, seconds, figure
    ROWS+=("$(printf '%-12s %-14s %5s  %s' "$1" "$2" "$3" "$4")")
}

# run_step NAME LIMIT_S FIGURE_LINES COMMAND…: the command under a timeout (and what is left of the budget), its
# log in $LOGS/NAME.log, the last FIGURE_LINES lines of figures printed, PASS/FAIL recorded.
run_step() {
    local name=$1 limit=$2 lines=$3
    shift 3
    local log=$LOGS/$name.log left=$((BUDGET - ($(date +%s) - STARTED)))
    if ((left < limit)); then limit=$left; fi
    echo "== $name: $*"
    if ((limit < 10)); then
        echo "== $name: FAIL (no time left of the ${BUDGET}s budget)"
        record "$name" "FAIL (no time)" 0 ""
        FAILED+=("$name")
        return 1
    fi
    local t0 rc seconds
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    seconds=$(($(date +%s) - t0))
    if [[ $name == pytest ]]; then  # the failed tests with their messages, then pytest's closing line
        tr '\r' '\n' <"$log" | grep -E '^(FAILED|ERROR) ' | cut -c1-170 | head -n "$lines"
        tr '\r' '\n' <"$log" | grep -E '[0-9]+ (passed|failed|error|skipped)' | tail -n 1
    else
        figures "$log" "$lines"
    fi
    if ((rc == 0)); then
        echo "== $name: PASS (${seconds}s)"
        record "$name" PASS "$seconds" "$(key_figure "$name" "$log" 0)"
        return 0
    fi
    if ((rc == 124 || rc == 137)); then
        echo "== $name: FAIL ($rc: timed out after ${limit}s)"
    else
        echo "== $name: FAIL ($rc)"
    fi
    record "$name" "FAIL ($rc)" "$seconds" "$(key_figure "$name" "$log" "$rc")"
    FAILED+=("$name")
    return 1
}

key_figure() {  # step, log, rc → one line for the summary table
    local lines
    lines=$(tr '\r' '\n' <"$2")
    if (($3 != 0)) && [[ $1 != pytest ]]; then  # the error, as the step's last line says it
        grep -Ev '^\s*$' <<<"$lines" | tail -n 1 | cut -c1-110
        return
    fi
    case $1 in
    wheels) echo "$(compgen -G '.whl/*.whl' | wc -l) wheels into $SITE" ;;
    pytest) grep -E '[0-9]+ (passed|failed|error|skipped)' <<<"$lines" | tail -n 1 | tr -d '=' | xargs ;;
    sample-data) grep -E '^wrote' <<<"$lines" | head -n 1 ;;
    preprocess | infer | infer-bf16) grep -E '^rows ' <<<"$lines" | tail -n 1 ;;
    bench) sed -nE 's/^(.{11}) decode {2,}.* ([0-9.]+) tok\/s +ratio.*/\1 \2 tok\/s/p' <<<"$lines" |
        sed -E 's/ +/ /g' | paste -sd ';' | sed 's/;/; /g; s/^/decode: /' ;;
    esac
}

SITE=$WORK/site
if compgen -G ".whl/*.whl" >/dev/null; then
    run_step wheels 90 3 "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
else
    echo "== wheels: none in .whl/ (make gpu-wheels): using what the image has"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
from importlib.metadata import PackageNotFoundError, version
found = []
for name in ("transformers", "tokenizers", "huggingface_hub", "av", "soundfile"):
    try:
        found.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        found.append(f"{name} missing")
print("packages: " + ", ".join(found))
EOF

run_step pytest 200 30 "$PYTHON" -m pytest -q tests/gpu -p no:cacheprovider --durations=5

JOB=$WORK/job
CLI=("$PYTHON" -m pipelines.cli)
job_ok=1
for step in sample-data preprocess infer infer-bf16; do
    if ((!job_ok)); then
        echo "== $step: not run (an earlier job step failed)"
        record "$step" "not run" 0 "after a failed job step"
        continue
    fi
    case $step in
    sample-data) cmd=("${CLI[@]}" sample-data "$JOB/sample" --rows 12) ;;
    preprocess) cmd=("${CLI[@]}" preprocess "$JOB/sample/manifest.jsonl" "$JOB/pre" --tokenizer "$JOB/sample/tokenizer") ;;
    infer) cmd=("${CLI[@]}" infer "$JOB/pre" "$JOB/inf" --checkpoint "$JOB/sample/checkpoint" --max-new-tokens 16
        --device cuda) ;;
    infer-bf16) cmd=("${CLI[@]}" infer "$JOB/pre" "$JOB/inf16" --checkpoint "$JOB/sample/checkpoint"
        --max-new-tokens 16 --device cuda --dtype bfloat16) ;;
    esac
    # the later job steps need the sample and its preprocess output; the two infer runs are independent
    if ! run_step "$step" 90 6 "${cmd[@]}" && [[ $step == sample-data || $step == preprocess ]]; then job_ok=0; fi
done

# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
run_step bench 300 30 "${CLI[@]}" bench generate --device cuda $BENCH_ARGS

{
    echo "== summary ($(($(date +%s) - STARTED))s; logs in $LOGS)"
    printf '%-12s %-14s %5s  %s\n' step result sec figures
    printf '%s\n' "${ROWS[@]}"
    if ((${#FAILED[@]} == 0)); then
        echo "GPU SMOKE: PASS"
    else
        echo "GPU SMOKE: FAIL (steps ${FAILED[*]})"
    fi
} | tee -a "$SUMMARY"
if ((${#FAILED[@]} == 0)); then exit 0; else exit 1; fi
