#!/usr/bin/env bash
# Build the s2.fleet collection tarball with the runtime inside it.
#
#   bash scripts/build-collection.sh [OUTPUT_DIR]     (default: dist/)
#
# 1. builds the s2-bridge wheel (pure Python) from files/s2-bridge into the internal role's
#    roles/_common/files/runtime/ (git-ignored), with the runtime's requirements.lock beside it;
# 2. runs `ansible-galaxy collection build` into OUTPUT_DIR.
# 3. removes the wheel from the tree again.
# The installed collection's roles install from the bundled wheel; a checkout builds from files/s2-bridge.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${VENV:-$root/.venv}
out=${1:-$root/dist}
collection=$root/collections/ansible_collections/s2/fleet
runtime=$collection/roles/_common/files/runtime

[[ -x $venv/bin/pip && -x $venv/bin/ansible-galaxy ]] || {
  echo "build-collection: no $venv/bin/pip or ansible-galaxy; run: bash scripts/test.sh setup" >&2; exit 1; }

# The bundled wheel lives in the tree only while the tarball is built: a checkout keeps
# installing from its own source (a stale wheel left here would win over it).
cleanup() { rm -f "$runtime"/s2_bridge-*.whl "$runtime"/requirements.lock; }
trap cleanup EXIT
cleanup
mkdir -p "$runtime" "$out"
# a reproducible wheel (zip timestamps from SOURCE_DATE_EPOCH): the same source gives the same
# checksum, which is the roles' wheel-set key, so re-running with a rebuilt tarball changes nothing
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800} "$venv/bin/pip" wheel --no-deps --disable-pip-version-check --quiet files/s2-bridge -w "$runtime"
cp files/s2-bridge/requirements.lock "$runtime/requirements.lock"
# pip leaves a build/ directory in the source tree on some versions: not part of anything
rm -rf files/s2-bridge/build

"$venv/bin/ansible-galaxy" collection build --force --output-path "$out" "$collection"
ls -1 "$out"/s2-fleet-*.tar.gz
