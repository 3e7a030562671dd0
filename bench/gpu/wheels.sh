#!/usr/bin/env bash
# Wheels for a CUDA machine that cannot reach a package index but whose Python already has torch, numpy, scipy,
# h5py, tensorboard, torchmetrics, matplotlib, pytest (a typical GPU image): what posesplat, its CUDA tests and
# tables 1-2 of `python -m bench` need beyond that, at the versions of this checkout's .venv.
#   bash bench/gpu/wheels.sh [DIR=.whl] [PYTHON_VERSION=3.12]
# Then carry DIR to the machine and run `bash bench/gpu/run.sh` there (docs/gpu.md). Ray is not among them: its
# wheel (~80 MB) is for machines that can install it themselves.
set -euo pipefail
dir=${1:-.whl}
pyver=${2:-3.12}
venv_py=${VENV_PY:-.venv/bin/python}
names=(gsplat zarr google_crc32c numcodecs donfig pydantic pydantic_core typing_inspection annotated_types typing_extensions tabulate)
mkdir -p "$dir"
for name in "${names[@]}"; do
  version=$("$venv_py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  "$venv_py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "$name==$version" 2> >(grep -v "is ignored: it is neither" >&2)
done
ls -l "$dir"
du -sh "$dir"
