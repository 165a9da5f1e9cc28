#!/usr/bin/env bash
# Issue 13's GPU checks as one prepared script, for a lent GPU host: it has torch but no Ray, no pytest and no
# network, and a session gets about 15 minutes of it in all, 10 a command.
#
# Here, once (needs the package registry):   bash benchmarks/gpu_checks.sh prepare
#   Ray's trimmed wheel and its missing dependencies (../shared/gpu/prepare.sh) and pytest's wheels into .whl/,
#   the fake-CIFAR-10 helpers into .gpu/ (both git-ignored).
# There, one device call per line, each carrying [".whl", ".gpu"] (rough H100 times):
#   bash benchmarks/gpu_checks.sh tests gan     # pytest -m gpu; the GAN step eager vs compiled   (~4 min)
#   bash benchmarks/gpu_checks.sh round actors  # a profiled round; clients_per_actor 1, 5, 20    (~5 min)
#   bash benchmarks/gpu_checks.sh sisa          # rayfed sisa exact with deterministic kernels, and without
# Each stage writes $OUT/<stage>.log ($OUT is the device call's return folder; ./gpu-checks elsewhere) and the
# next stage runs after a failed one; the exit status is the number of stages that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-checks}"
mkdir -p "$out"

prepare() {
  bash ../shared/gpu/prepare.sh
  python3 -m pip download -q --no-deps -d .whl pytest pluggy iniconfig packaging pygments  # pure Python
}

host_setup() {  # Ray and pytest from the carried wheels where the host lacks them; fake full-size CIFAR-10
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # rayfed from this tree, not installed there
  if ! python3 -c "import ray, pytest" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
  [ -f data/md5.json ] || python3 .gpu/make_fake_cifar.py data
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)"
  python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU')"
}

patched() { python3 .gpu/run_patched.py "$@"; }  # torchvision's CIFAR-10 checksums pointed at the fake data

tests() { python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py; }

gan() { patched benchmarks/bench_gan_step.py --preset notebook --device cuda --rounds 4; }

round() { patched benchmarks/bench_round.py --preset notebook --device cuda --repeats 1 --rounds 3 --profile; }

actors() {  # 20 client actors, 4 of 5 (what auto picks for one GPU), 1 of 20
  for n in 1 5 20; do
    echo "== resources.clients_per_actor=$n"
    patched benchmarks/bench_round.py --preset notebook --device cuda --skip notebook --skip warm --repeats 1 \
      --rounds 3 --set "resources.clients_per_actor=$n" || return 1
  done
}

sisa() {
  python3 -m rayfed sisa --out "$out/sisa" || return 1
  python3 -m rayfed sisa --set sisa.deterministic=false --out "$out/sisa-fast" || return 1
  python3 - "$out" <<'PY'
import sys
import pandas as pd
for run in ("sisa", "sisa-fast"):
    print(run, pd.read_parquet(f"{sys.argv[1]}/{run}/exactness.parquet").to_string(index=False), sep="\n")
PY
}

[ $# -gt 0 ] || { echo "usage: $0 prepare | {tests,gan,round,actors,sisa}..." >&2; exit 2; }
if [ "$1" = prepare ]; then
  prepare
  exit
fi
for stage in "$@"; do
  case "$stage" in tests | gan | round | actors | sisa) ;; *) echo "error: unknown stage $stage" >&2; exit 2 ;; esac
done
host_setup >"$out/host.log" 2>&1
status=$?
cat "$out/host.log"
[ "$status" = 0 ] || { echo "error: host setup failed (exit $status, $out/host.log)" >&2; exit 1; }
failed=0
for stage in "$@"; do
  start=$SECONDS
  "$stage" >"$out/$stage.log" 2>&1
  status=$?
  echo "$stage: exit $status in $((SECONDS - start)) s ($out/$stage.log)"
  tail -n 25 "$out/$stage.log"
  [ "$status" = 0 ] || failed=$((failed + 1))
done
exit "$failed"
