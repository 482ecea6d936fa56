#!/usr/bin/env bash
# Builds llama.cpp's OpenAI-compatible server (llama-cpp-python[server], compiled from source)
# into a virtual environment outside the repository, once per machine: the build takes 10-20
# minutes on 2 cores, so it is kept in the cache and reused while the machine lives.
# Prints the venv's path on its last line. A missing compiler or a failed build exits non-zero.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
CACHE="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
VENV="$CACHE/llama-cpp-python-$VERSION-py$PYVER-$(uname -m)"
if [ -f "$VENV/.built" ] && "$VENV/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    echo "$VENV"; exit 0
fi
for tool in cc c++ cmake; do
    command -v "$tool" >/dev/null || { echo "build_llama.sh: '$tool' is missing (apt-get install build-essential cmake)" >&2; exit 1; }
done
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "build_llama.sh: compiling llama-cpp-python $VERSION into $VENV (10-20 minutes the first time)" >&2
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    "$VENV/bin/python" -m pip install --quiet --no-cache-dir "llama-cpp-python[server]==$VERSION" gguf numpy >&2
"$VENV/bin/python" -c 'import llama_cpp.server'
touch "$VENV/.built"
echo "$VENV"
