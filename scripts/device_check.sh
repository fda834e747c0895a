#!/usr/bin/env bash
# The GPU check (issue 7, item 3) as one prepared call on a lent GPU machine (docs/gpu.md).
#
#   here, once per session:  bash scripts/device_check.sh prepare
#       copies the embedded corpus (built by this machine's Python, so it is the corpus the CPU
#       goldens were recorded on) and the commit id into .device/, which git ignores;
#   there, through the device tool:  run(command="bash scripts/device_check.sh run",
#                                        carry=[".device"], timeout_s=540)
#       runs on the image's own python3 and torch (nothing can be installed there): goldtron from
#       src/ via PYTHONPATH. What it measured comes back in $OUT (8 files at most).
#   DEVICE_CHECK_CPU=1 bash scripts/device_check.sh run   rehearses the same steps on a CPU
#       machine (gloo, the cases' CPU sizes), to find a broken step before device time is spent.
#
# Steps, each with its own timeout so one hang cannot eat the lease:
#   1. the machine and torch as seen there; goldtron's unit tests on that torch;
#   2. the TP1 x PP1 companion case at Megatron's size on one GPU with NCCL (bf16, deterministic
#      mode), recorded as the golden of the detected platform (e.g. dgx_h200), then run again and
#      judged against it (is the GPU run reproducible?);
#   3. the flagship's ckpt-resume structure at TP1 x PP1 (one GPU cannot hold TP2 x PP2 with NCCL:
#      NCCL refuses two ranks on one device; deferral needs PP >= 2, so it is off): torch_dist
#      async save of CUDA tensors half-way, resume, run 2 judged bitwise against run 1;
#   4. goldtron's step time against the plain-PyTorch reference on the same GPU (benchmarks/).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
CASES=tests/functional_tests/test_cases/gpt
FLAGSHIP=gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute
COMPANION=gpt3_mcore_te_tp1_pp1_no_dropout

prepare() {
  local python=${PYTHON:-.venv/bin/python}
  rm -rf .device && mkdir -p .device/data
  "$python" -c "from goldtron.data.corpus import ensure_embedded_corpus as e; e('.device/data')"
  git rev-parse HEAD >.device/COMMIT
  git diff --quiet HEAD || echo "(uncommitted changes beside it)" >>.device/COMMIT
  echo "prepared .device/ ($(du -sh .device | cut -f1)) for commit $(head -1 .device/COMMIT)"
}

step() { echo; echo "=== $1   [$(date -u +%T)]"; }

# Step 3's case: the flagship's file with the layout and the deferral flags removed.
write_tp1_resume_case() {
  local target=$1
  mkdir -p "$target"
  "$PY" - "$CASES/$FLAGSHIP/model_config.yaml" "$target/model_config.yaml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for section in [config["MODEL_ARGS"]] + [p.get("MODEL_ARGS", {}) for p in config["GOLDTRON"]["PLATFORMS"].values()]:
    for flag in ("--defer-embedding-wgrad-compute", "--wgrad-deferral-limit"):
        section.pop(flag, None)
config["MODEL_ARGS"]["--tensor-model-parallel-size"] = 1
config["MODEL_ARGS"]["--pipeline-model-parallel-size"] = 1
config["GOLDTRON"]["PLATFORMS"]["cpu"]["NPROC_PER_NODE"] = 1
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
}

run_checks() {
  WORK=$(mktemp -d)
  PY=${PYTHON:-python3}
  export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 GOLDTRON_DATA_DIR=$PWD/.device/data
  local device=cuda
  [ "${DEVICE_CHECK_CPU:-0}" = 1 ] && device=cpu
  [ -f .device/data/goldtron_corpus.json ] || { echo "no .device/data: run 'bash scripts/device_check.sh prepare' here and carry .device"; exit 2; }
  local status=0

  step "1. machine, torch, goldtron's unit tests on this torch"
  echo "goldtron commit: $(cat .device/COMMIT)"
  [ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  timeout 240 "$PY" -m pytest -q -x tests/unit -p no:cacheprovider 2>&1 | tail -5 || status=1

  step "2. $COMPANION on one $device: record the golden, then judge a second run against it"
  cp -r "$CASES/$COMPANION" "$WORK/$COMPANION"
  timeout 420 "$PY" -m goldtron test "$WORK/$COMPANION" --record --output-dir "$WORK/companion_record" --no-plot || status=1
  timeout 420 "$PY" -m goldtron test "$WORK/$COMPANION" --output-dir "$WORK/companion_rerun" || status=1

  step "3. the flagship's ckpt-resume structure at TP1 x PP1 on one $device (bitwise resume, async torch_dist save)"
  write_tp1_resume_case "$WORK/tp1_pp1_resume"
  timeout 420 "$PY" -m goldtron test "$WORK/tp1_pp1_resume" --record --output-dir "$WORK/resume" --no-plot || status=1

  step "4. step time: goldtron vs the plain-PyTorch reference on one $device"
  local size=()
  # Megatron's flagship size on a GPU; the benchmark's default CPU size on a CPU rehearsal.
  [ "$device" = cuda ] && size=(--layers 12 --hidden 512 --heads 8 --seq 1024 --micro-batch 4 --global-batch 32)
  timeout 300 "$PY" benchmarks/step_time.py --device "$device" "${size[@]}" --warmup 3 --steps 10 || status=1

  step "collecting into \$OUT"
  cp "$WORK/$COMPANION"/golden_values_*.json "$WORK/$COMPANION"/golden_values_*.provenance "$OUT/" 2>/dev/null
  rm -f "$OUT"/golden_values_*cpu_intel_avx512*  # the committed CPU goldens travel with the copy
  cp "$WORK/companion_rerun/summary.md" "$OUT/companion_rerun_summary.md" 2>/dev/null
  cp "$WORK/companion_rerun/$COMPANION.png" "$OUT/companion_rerun.png" 2>/dev/null
  cp "$WORK/resume/summary.md" "$OUT/tp1_pp1_resume_summary.md" 2>/dev/null
  ls -la "$OUT"
  echo "device check finished with status $status"
  return $status
}

case "$MODE" in
  prepare) prepare ;;
  run)
    OUT=${OUT:-$PWD/out/device_check}
    mkdir -p "$OUT"
    run_checks 2>&1 | tee "$OUT/device_check.log" ;;
  *) echo "usage: bash scripts/device_check.sh prepare|run   (see the comment at the top)"; exit 2 ;;
esac
