# Sourced by the build scripts in this directory: the cache directory of a set of pinned
# tools, and one cached `go build` of each. Callers set `label` (the progress-line prefix)
# and call `cache_bin` before `build`.
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"
export CGO_ENABLED=0

# cache_bin KEY PIN_FILE...: set `bin` to the binaries' directory in the user cache (the
# rule of operator/modeldeploy/paths.py), keyed by KEY (the pinned versions) and the hash
# of the pin files (go.mod, go.sum) and the Go version, and create it.
cache_bin() {
  local key="$1" pin_hash cache_root
  shift
  pin_hash="$(cat "$@" <(go env GOVERSION) | sha256sum | cut -c1-12)"
  cache_root="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
  bin="$cache_root/$key-$pin_hash/bin"
  mkdir -p "$bin"
}

# build NAME MODULE_DIR PACKAGE [LDFLAGS]: build one binary unless the cache has it already.
build() {
  local name="$1" dir="$2" pkg="$3" ldflags="${4:-}" start
  if [[ -x "$bin/$name" ]]; then
    echo "[$label] $name: cached ($bin/$name)" >&2
    return
  fi
  start=$SECONDS
  echo "[$label] $name: building from $pkg ..." >&2
  (cd "$dir" && go build -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "[$label] $name: built in $((SECONDS - start))s" >&2
}
