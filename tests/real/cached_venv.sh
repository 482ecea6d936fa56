#!/usr/bin/env bash
# Real upstream servers that nobody here wrote, each in a virtual environment of its own outside
# the repository, built once per machine and reused while it lives (llama.cpp's server compiles
# from source: 10-20 minutes on 2 cores). Usage: cached_venv.sh llama|litellm
# Prints the venv's path on its last line; a missing compiler or a failed build exits non-zero.
set -euo pipefail
NAME="${1:?usage: cached_venv.sh llama|litellm}"
PYTHON="${PYTHON:-python3}"
CACHE="${SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar}"
case "$NAME" in
    llama)
        VERSION=0.3.36
        SPECS=("llama-cpp-python[server]==$VERSION" "gguf==0.19.0" numpy)
        CHECK="import llama_cpp.server, gguf"
        NEEDS=(cc c++ cmake) ;;
    litellm)
        VERSION=1.90.0  # newer releases' [proxy] extra needs litellm-proxy, which PyPI here lacks
        SPECS=("litellm[proxy]==$VERSION")
        CHECK="import litellm.proxy.proxy_server"
        NEEDS=() ;;
    *) echo "cached_venv.sh: unknown server '$NAME' (llama, litellm)" >&2; exit 2 ;;
esac
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$NAME" = llama ]; then
    VENV="$CACHE/llama-cpp-python-$VERSION-py$PYVER-$(uname -m)"
else
    VENV="$CACHE/$NAME-$VERSION-py$PYVER-$(uname -m)"
fi
export LITELLM_LOCAL_MODEL_COST_MAP=True  # its import would fetch a price list from the network
if [ -f "$VENV/.built" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    echo "$VENV"; exit 0
fi
missing=()
for tool in "${NEEDS[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "cached_venv.sh: installing a compiler and cmake (missing: ${missing[*]})" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake >&2
fi
for tool in "${NEEDS[@]}"; do
    command -v "$tool" >/dev/null || {
        echo "cached_venv.sh: '$tool' is missing to build $NAME (apt-get install build-essential cmake)" >&2
        exit 1
    }
done
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "cached_venv.sh: installing ${SPECS[*]} into $VENV" >&2
# llama.cpp: a portable build (no -march=native, so a cache moved to another CPU still runs),
# no tests or examples; all cores.
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    "$VENV/bin/python" -m pip install --quiet --no-cache-dir "${SPECS[@]}" >&2
"$VENV/bin/python" -c "$CHECK"
touch "$VENV/.built"
echo "$VENV"
