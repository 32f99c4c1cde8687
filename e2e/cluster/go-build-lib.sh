# Sourced by the build scripts in this directory: one cached `go build` of a pinned tool.
# Callers set `bin` (the cache directory) and `label` (the progress-line prefix).
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"
export CGO_ENABLED=0

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
