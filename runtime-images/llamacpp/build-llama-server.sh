#!/usr/bin/env bash
# Builds (or reuses) llama.cpp's `llama-server` from the llama.cpp source vendored in the
# pinned llama-cpp-python sdist (docs/runtimes.md): the sdist is fetched from PyPI with pip,
# hash-checked, and only the llama-server target is built with cmake.
#
# The binary lands in a cache directory outside the repository, keyed by the pinned version
# and a hash of the pin, the cmake flags and the compiler, and the script prints its path:
#     ${MODELDEPLOY_CACHE:-~/.cache/modeldeploy}/llama-server-<version>-<hash>/bin/llama-server
# One progress line goes to stderr; the cold build takes about 6 minutes on 2 cores.
#
# The runtime images run this same script (runtime-images/llamacpp/Dockerfile*), so the
# pin lives here only. Environment:
#   LLAMA_SERVER_CMAKE_ARGS   extra cmake flags (e.g. "-DGGML_CUDA=ON"): part of the key
#   LLAMA_SERVER_JOBS         parallel build jobs (default: 2)
#   PYTHON                    the Python whose pip downloads the sdist (default: python3)
# With --check it only prints the cached binary's path, or exits 1 if it is not built.
set -euo pipefail

# The pin: llama-cpp-python's version and the sha256 of the sdist PyPI serves for it.
LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_PYTHON_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# The llama.cpp commit that sdist vendors (its git metadata is not usable once unpacked
# alone, so it is stamped in for `llama-server --version`).
LLAMA_CPP_COMMIT="0c1e570"

# Portable (no -march=native; AVX2/FMA/F16C on x86-64), static, no network code (llama.cpp's
# own model downloads and HTTPS are not used: the fetcher places the model), no web UI.
# LLAMA_CURL is deprecated in this llama.cpp (replaced by LLAMA_OPENSSL), hence not passed.
cmake_flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_COMMIT="$LLAMA_CPP_COMMIT"
)
# shellcheck disable=SC2206 # word splitting of the extra flags is intended
extra_flags=(${LLAMA_SERVER_CMAKE_ARGS:-})
jobs="${LLAMA_SERVER_JOBS:-2}"
python="${PYTHON:-python3}"

say() { echo "[llama-server] $*" >&2; }

# Tools: install what is missing when root (CI, images), else say what to install.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    say "error: ${missing[*]} not found; install them (Debian/Ubuntu: apt-get install cmake g++ make)"
    exit 1
  fi
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
  say "error: $python has no pip (set PYTHON to a Python with pip)"
  exit 1
fi

compiler="$(g++ --version | head -n1)"
key_hash="$(printf '%s\n' "$LLAMA_CPP_PYTHON_SHA256" "${cmake_flags[*]}" "${extra_flags[*]}" \
  "$compiler" | sha256sum | cut -c1-12)"
cache_root="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
prefix="$cache_root/llama-server-$LLAMA_CPP_PYTHON_VERSION-$key_hash"
binary="$prefix/bin/llama-server"

if [[ -x "$binary" ]]; then
  [[ "${1:-}" == "--check" ]] || say "cached ($binary)"
  echo "$binary"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  say "not built yet ($binary): run make llama-server"
  exit 1
fi

sdist_dir="$cache_root/sdist"
sdist="$sdist_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
mkdir -p "$sdist_dir" "$prefix/bin"
work="$(mktemp -d "$prefix/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

start=$SECONDS
say "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (about 6 minutes on 2 cores) ..."
if [[ ! -f "$sdist" ]] || ! echo "$LLAMA_CPP_PYTHON_SHA256  $sdist" | sha256sum -c --status; then
  printf 'llama-cpp-python==%s --hash=sha256:%s\n' \
    "$LLAMA_CPP_PYTHON_VERSION" "$LLAMA_CPP_PYTHON_SHA256" >"$work/requirements.txt"
  "$python" -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
    -r "$work/requirements.txt" -d "$work/download" >&2
  mv "$work/download/$(basename "$sdist")" "$sdist"
fi
echo "$LLAMA_CPP_PYTHON_SHA256  $sdist" | sha256sum -c --status

tar -xzf "$sdist" -C "$work" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" "${cmake_flags[@]}" "${extra_flags[@]}" >"$work/cmake.log" 2>&1 ||
  { cat "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 ||
  { tail -n 60 "$work/build.log" >&2; exit 1; }
# Shared builds (the images': GGML_BACKEND_DL with every CPU variant as a loadable backend)
# keep their libraries next to the binary, found through an $ORIGIN rpath.
find "$work/build/bin" -maxdepth 1 -name '*.so*' -exec cp -P {} "$prefix/bin/" \;
install -m 0755 "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"  # last: the binary's presence marks a complete build
say "built in $((SECONDS - start))s ($binary)"
echo "$binary"
