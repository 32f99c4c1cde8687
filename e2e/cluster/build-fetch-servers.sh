#!/usr/bin/env bash
# Builds (or reuses) the servers the gs:// and oci:// fetch tests talk to, from the pinned Go
# tool modules in e2e/cluster/tools/: fake-gcs-server (a GCS emulator) and the CNCF
# distribution registry. They land in a cache directory outside the repository, keyed by the
# pinned versions and the hash of the go.mod/go.sum files; the script prints that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"
gcs_version="$(awk '$1=="github.com/fsouza/fake-gcs-server"{print $2}' "$tools/fake-gcs-server/go.mod")"
registry_version="$(awk '$1=="github.com/distribution/distribution/v3"{print $2}' "$tools/registry/go.mod")"

label=fetch-build
# shellcheck source=go-build-lib.sh
source "$here/go-build-lib.sh"
cache_bin "fetch-servers-gcs-$gcs_version-registry-$registry_version" \
  "$tools"/fake-gcs-server/go.* "$tools"/registry/go.*

build fake-gcs-server "$tools/fake-gcs-server" github.com/fsouza/fake-gcs-server
build registry "$tools/registry" github.com/distribution/distribution/v3/cmd/registry
echo "$bin"
