#!/usr/bin/env bash
# A CUDA 13.0 build environment from PyPI alone, for building `--features cuda` on a machine without a GPU and without
# NVIDIA's apt repository (this is how the GPU results in bench/results/ were built, on Debian 12):
#
#     bash tools/cuda-wheels.sh /opt/cuda13          # once: nvcc, cicc, headers, cudart, link stubs
#     source /opt/cuda13/env.sh                      # CUDA_ROOT, PATH, LIBRARY_PATH, CUDA_COMPUTE_CAP=90
#     cargo pgrx package --features cuda             # or cargo test --features cuda --no-run, etc.
#
# The wheels (nvidia-cuda-nvcc, -runtime, -crt, -cccl, nvidia-nvvm) unpack into one toolkit tree under
# PREFIX/nvidia/cu13. candle links the driver, cuBLAS, cuBLASLt, cuRAND and NVRTC dynamically; rather than download
# those libraries (gigabytes) only to link against them, PREFIX/stubs holds link-time stand-ins with the real sonames,
# one empty function per entry point that cudarc declares. They are for the linker only: never put PREFIX/stubs on
# LD_LIBRARY_PATH. At run time the GPU machine's driver and CUDA 13 libraries are loaded by those sonames.
set -euo pipefail
prefix=${1:?usage: tools/cuda-wheels.sh PREFIX}
version=13.0.88
mkdir -p "$prefix/wheels" "$prefix/stubs"
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d "$prefix/wheels" \
    "nvidia-cuda-nvcc==$version" "nvidia-cuda-runtime==$version" "nvidia-cuda-crt==$version" "nvidia-nvvm==$version" \
    "nvidia-cuda-cccl==13.0.85"
for w in "$prefix"/wheels/*.whl; do python3 -m zipfile -e "$w" "$prefix"; done
cuda=$prefix/nvidia/cu13
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/*
ln -sf libcudart.so.13 "$cuda/lib/libcudart.so"

# Link stubs from the function list of cudarc's bindings (the version candle's lockfile pins).
cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
bindings=$(dirname "$cudarc")/src
stub() { # library soname module
    grep -o -E '^pub unsafe fn [A-Za-z0-9_]+' "$bindings/$3/sys/mod.rs" | awk '{ print "void " $4 "(void) {}" }' |
        sort -u >"$prefix/stubs/$1.c"
    gcc -shared -fPIC -Wl,-soname,"$2" -o "$prefix/stubs/$1.so" "$prefix/stubs/$1.c"
}
stub libcuda libcuda.so.1 driver
stub libcublas libcublas.so.13 cublas
stub libcublasLt libcublasLt.so.13 cublaslt
stub libcurand libcurand.so.10 curand
stub libnvrtc libnvrtc.so.13 nvrtc

cat >"$prefix/env.sh" <<EOF
export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda
export PATH=$cuda/bin:\$PATH
export LIBRARY_PATH=$prefix/stubs:$cuda/lib:\${LIBRARY_PATH:-}
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} # H100 and H200; 80 for A100, 89 for L4/L40
EOF
"$cuda/bin/nvcc" --version | tail -n 2
echo "now: source $prefix/env.sh"
