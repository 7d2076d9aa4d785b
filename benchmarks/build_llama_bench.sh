#!/usr/bin/env bash
# Build llama.cpp's llama-bench (the optional comparison figure of benchmarks/decode.py) from the
# llama.cpp sources vendored in llama-cpp-python's source package, fetched from the package index
# (no other network). Needs cmake and a C++ compiler; takes a few minutes on 2 cores.
#
#   benchmarks/build_llama_bench.sh [DIR]      # default DIR: /tmp/llama.cpp; prints the binary's path
set -euo pipefail
dir=${1:-/tmp/llama.cpp}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$dir"
if [ ! -d "$dir/src" ]; then
  python -m pip download --quiet --no-deps --no-binary :all: -d "$dir" "llama-cpp-python==$version"
  tar -xzf "$dir/llama_cpp_python-$version.tar.gz" -C "$dir"
  mv "$dir/llama_cpp_python-$version/vendor/llama.cpp" "$dir/src"
  rm -rf "$dir/llama_cpp_python-$version" "$dir/llama_cpp_python-$version.tar.gz"
fi
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > "$dir/configure.log"
cmake --build "$dir/build" --target llama-bench llama-quantize -j "$(nproc)" > "$dir/build.log"
echo "$dir/build/bin/llama-bench"
