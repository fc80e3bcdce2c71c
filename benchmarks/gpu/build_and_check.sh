#!/usr/bin/env bash
# GPU check on a machine with an NVIDIA GPU, from the repository's root, with .device/ made
# by benchmarks/gpu/prepare.sh: build llama.cpp (llama-cpp-python 0.3.36's vendored source,
# trimmed) for CUDA (sm_90: Hopper; change CMAKE_CUDA_ARCHITECTURES for another GPU), point
# llama-cpp-python's bindings at it, and run benchmarks/gpu/gpu_check.py. Results go to
# $OUT (default /tmp/gpu_out): gpu_check.json, the cures CSV, the build log.
set -u
export PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/gpu_out}
mkdir -p $OUT
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/nvidia-smi.txt 2>&1
mkdir -p /tmp/b && tar xzf .device/llama-cpp-python-0.3.36-trimmed.tar.gz -C /tmp/b
SRC=/tmp/b/llama-cpp-python-0.3.36
T0=$(date +%s)
FLAGS="-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON
  -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF -DGGML_CUDA_NCCL=OFF"
configure() { rm -rf /tmp/b/build; cmake -S $SRC/vendor/llama.cpp -B /tmp/b/build $FLAGS "$@" >> /tmp/build.log 2>&1; }
if ! configure; then
  # cuBLAS outside the toolkit (the nvidia-cublas wheel): name its files to CMake.
  CUBLAS=$(find / -name 'libcublas.so*' -not -path '/proc/*' 2>/dev/null | head -n 1)
  CUBLASLT=$(find / -name 'libcublasLt.so*' -not -path '/proc/*' 2>/dev/null | head -n 1)
  INC=$(dirname "$(find / -name cublas_v2.h -not -path '/proc/*' 2>/dev/null | head -n 1)")
  echo "retry with cublas=$CUBLAS cublasLt=$CUBLASLT include=$INC" | tee -a /tmp/build.log
  configure -DCUDA_cublas_LIBRARY=$CUBLAS -DCUDA_cublasLt_LIBRARY=$CUBLASLT \
    "-DCMAKE_CUDA_FLAGS=-I$INC" "-DCMAKE_CXX_FLAGS=-I$INC"
fi
cmake --build /tmp/b/build --target llama -j 16 >> /tmp/build.log 2>&1
echo "build rc=$? seconds=$(( $(date +%s) - T0 ))" | tee -a /tmp/build.log
tail -c 20000 /tmp/build.log > $OUT/build.log
LIB=$(dirname "$(find /tmp/b/build -name 'libllama.so*' | head -n 1)")
echo "lib dir: $LIB" | tee -a $OUT/build.log
ls $LIB >> $OUT/build.log
export LLAMA_CPP_LIB_PATH=$LIB LD_LIBRARY_PATH=$LIB:${LD_LIBRARY_PATH:-}
export PYTHONPATH=$SRC:/tmp/site
cd $REPO && timeout 240 python3 benchmarks/gpu/gpu_check.py 2>&1 | tail -c 6000
