#!/usr/bin/env bash
# Prepare a GPU check for a machine that reaches nothing outside (a lent accelerator):
# the llama-cpp-python sdist trimmed to what a CUDA build of llama.cpp needs (no models,
# docs, tests, examples or other GGML backends: 76 MB -> about 5 MB), and the wheels
# of the few Python packages such a machine's image may lack. Run here, after `make
# server` (which fetched the sdist into build/), then copy .device/ to the machine and
# run benchmarks/gpu/build_and_check.sh there from the repository's root.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=build/llama-cpp-python-0.3.36
test -d "$SRC" || { echo "run make server first (it unpacks $SRC)" >&2; exit 1; }
mkdir -p .device/whl /tmp/kv-trim
rm -rf /tmp/kv-trim/llama-cpp-python-0.3.36
cp -a "$SRC" /tmp/kv-trim/
(
  cd /tmp/kv-trim/llama-cpp-python-0.3.36
  rm -rf .git examples docker .unpacked
  cd vendor/llama.cpp
  rm -rf models docs tests benches examples scripts conversion gguf-py media .devops
  (cd tools && ls | grep -v -x mtmd | xargs rm -rf)
  (cd ggml/src && ls -d ggml-*/ | grep -v -x -e ggml-cpu/ -e ggml-cuda/ | xargs rm -rf)
)
tar czf .device/llama-cpp-python-0.3.36-trimmed.tar.gz -C /tmp/kv-trim llama-cpp-python-0.3.36
for pkg in diskcache==5.6.3 gguf==0.19.0 jsonschema==4.26.0 jsonschema-specifications \
    referencing rpds-py; do
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .device/whl "$pkg"
done
cp benchmarks/gpu/gpu_check.py .device/gpu_check.py
cp benchmarks/gpu/build_and_check.sh .device/device.sh
du -sh .device
