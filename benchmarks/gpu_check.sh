#!/usr/bin/env bash
# The GPU check of beitv2_lab: every speed benchmark in one command, one markdown table at the end.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine (H100 / H200): the full check, <= 8 minutes
#   bash benchmarks/gpu_check.sh --smoke    # on a CPU: the same code paths at tiny shapes, all parts at once (~40 s on 2 cores)
#
# Options: --peak-tflops N  dense bf16 peak for MFU (default 989: H100 / H200 SXM; H100 PCIe: 756)
#          --budget S       seconds for all parts together (default 480 full, 300 smoke); a part gets
#                           min(its own limit, what is left) and is skipped when under 20 s is left
#          --data DIR       JPEG image folder for the loader (default: ../shared/data/imagenette2-224/train if
#                           present, else synthetic JPEGs written to a temporary folder: the table says which)
#          --wheels DIR     install these wheels (pip --no-deps) into a temporary site folder first
#                           (default: .whl in the repo root if it holds any): packages a bare machine lacks
#          --compile-backend B  torch.compile backend of the compiled configs (default inductor; smoke: eager)
#          --logs DIR       part logs, status.tsv and table.md go here (default: $OUT if set, else a temp folder)
#          --parts LIST     comma-separated parts to run (default: mim,vqkd,quantizer,ibot,loader); the others are
#                           rows 'n/a (not run)' in the table (the exit status is the chosen parts')
#
# Parts, in this order, each a separate process tree under `timeout` (killed at its limit; the check goes on),
# each printing `RESULT {json}` lines that benchmarks/gpu_table.py turns into the table. Every figure comes from
# this run, baselines included (fp32 eager, the peer library, the CPU loader).
#   part       what                                                           limit  estimate on one H100/H200
#   mim        benchmarks/mim_step.py: BEiT v2 MIM step, beitv2_base_patch16_224 + vqkd_base @224, B=64:
#              fp32 eager (baseline), bf16 eager, bf16 + torch.compile; img/s, max_allocated, MFU (its FLOP count)
#                                                                              180 s  ~120 s (compile ~60-90 s)
#   vqkd       benchmarks/vqkd_step.py: VQ-KD step, vqkd_base + timm:vit_base_patch16_224 teacher with random
#              weights (ViT-B/16 @224 = CLIP-B/16's cost, no download), B=64, same three configs; then
#              tokenizer `encode`, B=256, bf16 autocast                         180 s  ~130 s (compile ~60-90 s)
#   quantizer  benchmarks/quantizer.py --devices cuda: ours vs vector-quantize-pytorch, K=8192 C=32 N=64x196
#                                                                                60 s   ~25 s
#   ibot       benchmarks/ibot_step.py: iBOT loss step, ours vs lightly (ours only if lightly is missing), B=64
#                                                                                60 s   ~30 s
#   loader     benchmarks/loader.py: PIL / decode_jpeg decode, TwoViewTransform, DataLoader at 0/4/8 workers,
#              make_loader, GPU decode_jpeg(device='cuda') + v2 ops; 1024 images, batch 128, 2 rounds
#                                                                                90 s   ~60 s
#   The compiled configurations' notes say after how many steps their compile pays back against bf16 eager: the
#   figure train.AUTO_COMPILE_STEPS (compile='auto' on GPU) should follow.
#   estimate ~6 min in all (process starts ~5 s each, most of the rest is the two compiles), budget 8 min.
#   Run it through the device tool with timeout_s=600: the budget ends the parts by ~490 s and the table follows.
# The device tool's machine has its own python3 (3.12) and torch (2.11 there, not the 2.14 of constraints.txt): the
# table prints the versions that ran. It lacks some pure-Python packages; fetch them here once into .whl (ignored by
# git: .gitignore), carry `.whl`, and this script installs them into a temporary folder first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     fastcore==1.14.5 vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 \
#     torch-einops-utils==0.2.0 lightly==1.6.0 timm==1.0.31          # ~3.4 MB, all py3-none-any
#   device run: command `bash benchmarks/gpu_check.sh`, carry [".whl"], timeout_s 600 ($OUT gets the 5 part logs,
#   status.tsv and table.md)
# Exit status: 0 when every part succeeded, 1 when one failed / timed out / was skipped (the table is printed anyway),
# 2 for bad options or no CUDA in a full run.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
SMOKE=0 PEAK=989 BUDGET='' DATA='' WHEELS='' BACKEND='' LOGS='' PARTS=mim,vqkd,quantizer,ibot,loader
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --peak-tflops|--budget|--data|--wheels|--compile-backend|--logs|--parts)
      [ $# -ge 2 ] || { echo "gpu_check: $1 needs a value" >&2; exit 2; }
      case $1 in
        --peak-tflops) PEAK=$2 ;; --budget) BUDGET=$2 ;; --data) DATA=$2 ;; --wheels) WHEELS=$2 ;;
        --compile-backend) BACKEND=$2 ;; --logs) LOGS=$2 ;; --parts) PARTS=$2 ;;
      esac; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $PEAK =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "gpu_check: --peak-tflops must be a positive number, got $PEAK" >&2; exit 2; }
[ -z "$BUDGET" ] && BUDGET=$([ $SMOKE = 1 ] && echo 300 || echo 480)
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget must be whole seconds, got $BUDGET" >&2; exit 2; }
[ -z "$BACKEND" ] && BACKEND=$([ $SMOKE = 1 ] && echo eager || echo inductor)
case $BACKEND in inductor|aot_eager|eager) ;; *) echo "gpu_check: --compile-backend: inductor, aot_eager or eager" >&2; exit 2 ;; esac
for p in ${PARTS//,/ }; do
  case $p in mim|vqkd|quantizer|ibot|loader) ;; *) echo "gpu_check: --parts: unknown part $p (mim, vqkd, quantizer, ibot, loader)" >&2; exit 2 ;; esac
done
if [ -n "$DATA" ] && [ ! -d "$DATA" ]; then echo "gpu_check: --data: no folder $DATA" >&2; exit 2; fi

TMP=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
if [ -z "$LOGS" ]; then LOGS=${OUT:-$(mktemp -d /tmp/gpu_check_logs.XXXXXX)}; fi
mkdir -p "$LOGS" || exit 2
rm -f "$LOGS/status.tsv" "$LOGS"/{mim,vqkd,quantizer,ibot,loader}.log "$LOGS/table.md"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -z "$WHEELS" ] && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then WHEELS=$ROOT/.whl; fi
if [ -n "$WHEELS" ]; then
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$TMP/site" "$WHEELS"/*.whl \
    || { echo "gpu_check: installing the wheels in $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH="$ROOT:$TMP/site${PYTHONPATH#$ROOT}"
  echo "wheels: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
fi
# the library must import before any part runs (a bare machine without the .whl packages fails here, in seconds)
"$PY" -c 'import torch, torchvision, timm, beitv2_lab.task_mim, beitv2_lab.task_vqkd, beitv2_lab.ibot
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")' \
  || { echo "gpu_check: beitv2_lab does not import here (missing packages? see the header on .whl)" >&2; exit 2; }

if [ $SMOKE = 1 ]; then
  DEV=cpu; GPU='none (--smoke: CPU)'
  export OMP_NUM_THREADS=1   # tiny shapes on shared cores: one thread each avoids OpenMP spin-waits
else
  DEV=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")') || exit 2
  if [ "$DEV" != cuda ]; then echo "gpu_check: torch sees no CUDA device; on a CPU run --smoke" >&2; exit 2; fi
  GPU=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
  GPU=${GPU:-'? (nvidia-smi gave nothing)'}
fi

if [ -z "$DATA" ] && [ $SMOKE = 0 ] && [ -d "$ROOT/../shared/data/imagenette2-224/train" ]; then
  DATA=$ROOT/../shared/data/imagenette2-224/train
fi
SYNTH=0
if [ -z "$DATA" ]; then DATA=$TMP/synthetic_jpegs; SYNTH=1; fi   # written inside the loader part (its time counts there)

START=$(date +%s)
run_part() {  # NAME LIMIT_S COMMAND: run COMMAND (a bash string) under timeout, log it, record its status
  local name=$1 limit=$2 cmd=$3 left t0 rc wall
  left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$left" >>"$LOGS/status.tsv"; echo "== $name: skipped (${left} s of the budget left)"
    return
  fi
  echo "== $name (limit ${limit} s): $cmd" >"$LOGS/$name.log"
  t0=$(date +%s%N)
  timeout -k 10 "$limit" bash -c "$cmd" >>"$LOGS/$name.log" 2>&1; rc=$?
  wall=$(( ($(date +%s%N) - t0) / 1000000 )); wall=$(( wall / 1000 )).$(printf '%03d' $(( wall % 1000 )))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$wall" "$limit" >>"$LOGS/status.tsv"
  echo "== $name: exit $rc in $wall s"
}

q() { printf '%q' "$1"; }
if [ $SMOKE = 1 ]; then
  C="--device cpu --threads 1 --inline --repeats 1 --warmup 1"
  MIM="benchmarks/mim_step.py $C --img-size 32 --batch-size 2 --flop-batch 1 --configs fp32,bf16,bf16-compile"
  VQKD="benchmarks/vqkd_step.py $C --img-size 32 --teacher timm:test_vit --teacher-weights random \
--batch-size 2 --encode-batch 2 --flop-batch 1 --configs fp32,bf16,bf16-compile,encode"
  QUANT="benchmarks/quantizer.py --devices cpu --threads 1 --inline --repeats 1 --warmup 1 --batch 2 --patches 16 \
--codebook-size 64 --code-dim 8"
  IBOT="benchmarks/ibot_step.py $C --batch-size 2 --n-tokens 16 --out-dim 64 --embed-dim 32 --n-local 2"
  NJPEG=12; LOADER="benchmarks/loader.py --device cpu --n-images 8 --batch-size 4 --workers 0 --repeats 1"
  LIMITS=(240 240 240 240 240)   # correctness only: generous, since the parts share the cores with each other (and CI's other tests)
else
  T="--timeout 60 --compile-timeout 90 --peak-tflops $PEAK"
  MIM="benchmarks/mim_step.py --device cuda --configs fp32,bf16,bf16-compile --batch-size 64 --repeats 5 --warmup 2 $T"
  VQKD="benchmarks/vqkd_step.py --device cuda --configs fp32,bf16,bf16-compile,encode --batch-size 64 \
--encode-batch 256 --repeats 5 --warmup 2 $T"
  QUANT="benchmarks/quantizer.py --devices cuda"
  IBOT="benchmarks/ibot_step.py --device cuda --timeout 40"
  NJPEG=1152; LOADER="benchmarks/loader.py --device cuda --n-images 1024 --batch-size 128 --workers 0 4 8 --repeats 2"
  LIMITS=(180 180 60 60 90)
fi
GEN=''
[ $SYNTH = 1 ] && GEN="\"$PY\" benchmarks/_bench.py jpegs $(q "$DATA") $NJPEG && "
# a GPU run measures one part at a time; --smoke (whose CPU figures mean nothing) runs them all at once
part() {
  case ",$PARTS," in *",$1,"*) ;; *) return ;; esac          # not chosen: 'n/a (not run)' in the table
  if [ $SMOKE = 1 ]; then run_part "$@" & else run_part "$@"; fi
}
part mim "${LIMITS[0]}" "\"$PY\" $MIM --compile-backend $BACKEND"
part vqkd "${LIMITS[1]}" "\"$PY\" $VQKD --compile-backend $BACKEND"
part quantizer "${LIMITS[2]}" "\"$PY\" $QUANT"
part ibot "${LIMITS[3]}" "\"$PY\" $IBOT"
part loader "${LIMITS[4]}" "$GEN\"$PY\" $LOADER --data-path $(q "$DATA")"
wait

TOTAL=$(( $(date +%s) - START ))
echo "logs: $LOGS$([ $SYNTH = 1 ] && echo "; loader data: $NJPEG synthetic JPEGs (no image folder here)")"
"$PY" benchmarks/gpu_table.py "$LOGS" --gpu "$GPU" --peak-tflops "$PEAK" --total-s "$TOTAL" | tee "$LOGS/table.md"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
awk -F'\t' '$2 != "0" {bad=1} END {exit bad}' "$LOGS/status.tsv"
