#!/usr/bin/env bash
# The GPU half of the benchmarks and tests, from a checkout on a CUDA machine (docs/gpu.md):
#   bash bench/gpu/run.sh [STEP ...]      steps: env build tests bench train (default: all, in that order)
# Wheels in .whl/ (bench/gpu/wheels.sh) are installed first, for machines without a package index. Each step's
# output goes to $OUT/log.txt (OUT defaults to gpu-results/) and its exit status and seconds to $OUT/steps.txt; a
# failing step does not stop the next. bench writes $OUT/benchmarks-gpu.md and $OUT/memory_model.json, train
# $OUT/train.jsonl (the final metrics of each debug config trained on the GPU).
set -uo pipefail
out=${OUT:-gpu-results}
py=${PYTHON:-python3}
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then  # build gsplat for this GPU only (minutes instead of many)
  arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null) \
    && export TORCH_CUDA_ARCH_LIST=$arch
fi
# torch finds CUDA's headers through `nvcc`'s folder; where nvcc is a wrapper script elsewhere (/usr/local/bin) the
# host compiler misses cuda_runtime.h, so point it at the toolkit
if [ -z "${CUDA_HOME:-}" ] && [ -f /usr/local/cuda/include/cuda_runtime.h ]; then export CUDA_HOME=/usr/local/cuda; fi
big=data/synthetic_mouse_288x256.zarr  # Pose Splatter's image size (1152x1024 downsampled by 4)

step_env() {
  nvidia-smi || true
  "$py" -c "import torch, gsplat, zarr, pydantic; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'gsplat', gsplat.__version__, \
'zarr', zarr.__version__, 'pydantic', pydantic.__version__)"
}
step_build() {  # gsplat compiles its CUDA kernels on first use (cached in ~/.cache/torch_extensions)
  "$py" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA kernels did not build'; print('gsplat kernels ready')"
}
step_tests() {
  "$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_render_cuda.py tests/test_train.py
}
step_bench() {  # table 1 makes its own scenes; table 2 trains on the paper-sized dataset only
  [ -d $big ] || "$py" -m posesplat.synth --out $big --height 256 --width 288 --frames 60 || return
  "$py" -m bench --only 1,2 --dataset $big --out "$out/benchmarks-gpu.md" && cp study/memory_model.json "$out/"
}
step_train() {
  [ -d data/synthetic_mouse.zarr ] || "$py" -m posesplat.synth --out data/synthetic_mouse.zarr || return
  local rc=0 runs
  runs=$(mktemp -d)
  for mode in 3d 2d 2d_screen; do
    for backend in gsplat torch; do
      "$py" -m posesplat.train "configs/2d_3d_comparison_${mode}_debug.json" --out "$runs/${mode}_$backend" \
        --set device='"cuda"' backend="\"$backend\"" || { rc=1; continue; }
      "$py" -c "import json, sys; from posesplat.train import read_jsonl; \
print(json.dumps({'mode': sys.argv[2], 'backend': sys.argv[3], **read_jsonl(sys.argv[1])[-1]}))" \
        "$runs/${mode}_$backend/metrics.jsonl" "$mode" "$backend" >>"$out/train.jsonl"
    done
  done
  return $rc
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(env build tests bench train)
status=0
for s in "${steps[@]}"; do
  declare -F "step_$s" >/dev/null || { echo "unknown step '$s' (env build tests bench train)" >&2; exit 2; }
  t0=$(date +%s)
  echo "===== $s" >>"$out/log.txt"
  "step_$s" >>"$out/log.txt" 2>&1
  rc=$?
  [ $rc -eq 0 ] || status=1
  echo "$s: rc $rc, $(( $(date +%s) - t0 )) s" | tee -a "$out/steps.txt"
done
exit $status
