#!/usr/bin/env bash
# Issue 13's GPU checks as one prepared script, for a lent GPU host: it has torch and pytest but no Ray and no
# network, and a session gets about 15 minutes of it in all (a machine's start included), 10 a command.
#
# Here, once (needs the package registry):   bash benchmarks/gpu_checks.sh prepare
#   Ray's trimmed wheel and its missing dependencies (../shared/gpu/prepare.sh) into .whl/ (41 MiB), the
#   fake-CIFAR-10 helpers into .gpu/ (both git-ignored).
# There, two device calls, each carrying [".whl", ".gpu"], the second sent at once while the machine is warm
# (timeout_s 570, then whatever is left); STAGE:SECONDS caps a stage's time:
#   bash benchmarks/gpu_checks.sh tests:200 gan:150 sisa:160  # pytest -m gpu; GAN step eager vs compiled;
#                                                             # rayfed sisa with deterministic kernels and without
#   bash benchmarks/gpu_checks.sh round:180 actors:150        # a profiled round; clients_per_actor 5, 20, 1
# Each stage writes $OUT/<stage>.log ($OUT is the device call's return folder; ./gpu-checks elsewhere) and the
# next stage runs after a failed or timed-out one; the exit status is the number of stages that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-checks}"
mkdir -p "$out"

prepare() {
  bash ../shared/gpu/prepare.sh
}

host_setup() {  # Ray from the carried wheels where the host lacks it (it has pytest); fake full-size CIFAR-10
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

actors() {  # 4 actors of 5 clients (what auto picks for one GPU), 20 of 1, 1 of 20
  for n in 5 20 1; do
    echo "== resources.clients_per_actor=$n"
    patched benchmarks/bench_round.py --preset notebook --device cuda --skip notebook --skip warm --repeats 1 \
      --rounds 3 --set "resources.clients_per_actor=$n" || return 1
  done
}

sisa() {
  local run start
  for run in sisa:true sisa-fast:false; do
    start=$SECONDS
    python3 -m rayfed sisa --set "sisa.deterministic=${run#*:}" --out "$out/${run%%:*}" || return 1
    echo "${run%%:*} (sisa.deterministic=${run#*:}): $((SECONDS - start)) s wall"
    python3 -c "import sys, pandas; print(pandas.read_parquet(sys.argv[1]).to_string(index=False))" \
      "$out/${run%%:*}/exactness.parquet"
  done
}

[ $# -gt 0 ] || { echo "usage: $0 prepare | {tests,gan,round,actors,sisa}[:SECONDS]..." >&2; exit 2; }
case "$1" in
  prepare) prepare; exit ;;
  _stage) "$2"; exit ;;  # one stage in its own process, so that timeout can end it
esac
for stage in "$@"; do
  case "${stage%%:*}" in tests | gan | round | actors | sisa) ;; *) echo "error: unknown stage $stage" >&2; exit 2 ;; esac
done
host_setup >"$out/host.log" 2>&1
status=$?
cat "$out/host.log"
[ "$status" = 0 ] || { echo "error: host setup failed (exit $status, $out/host.log)" >&2; exit 1; }
failed=0
for spec in "$@"; do
  stage=${spec%%:*} limit=${spec#*:}
  [ "$limit" != "$spec" ] || limit=0  # timeout 0: no limit
  start=$SECONDS
  timeout -k 10 "$limit" bash "$0" _stage "$stage" >"$out/$stage.log" 2>&1
  status=$?
  echo "$stage: exit $status in $((SECONDS - start)) s ($out/$stage.log)"
  tail -n 25 "$out/$stage.log"
  [ "$status" = 0 ] || failed=$((failed + 1))
  pkill -9 -f 'raylet|gcs_server|ray::|default_worker.py' 2>/dev/null  # what a timed-out stage left running
done
exit "$failed"
