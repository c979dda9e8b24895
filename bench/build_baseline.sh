#!/usr/bin/env bash
# Build the kernel image of an older commit, to measure the start figures against it in the
# same run (bench/run.py --baseline IMAGE):
#
#   bash bench/build_baseline.sh REF [TAG]   # TAG: enclave-tools/kernel:baseline-<REF's hash>
#
# The commit's own build code builds its own recipe, in a temporary worktree, on the base
# this checkout's kernel image was built on (python:3.12-slim, or the Debian base make image
# bootstraps), so the two images differ in their recipes only; the image is then measured
# with today's client.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: bash bench/build_baseline.sh REF [TAG]}
commit=$(git rev-parse --verify --short "$ref^{commit}")
tag=${2:-enclave-tools/kernel:baseline-$commit}
python=$PWD/.venv/bin/python
[ -x "$python" ] || { echo "no $python: run make image first"; exit 1; }
names=$("$python" -c 'from enclave_tools.image.build import LABEL_BASE
from enclave_tools.image.recipe import default_image
print(default_image(), LABEL_BASE)')
read -r image label <<<"$names"
base=$(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null) || base=
[ -n "$base" ] && [ "$base" != "<no value>" ] || { echo "no local kernel image $image: run make image first"; exit 1; }
docker image inspect "$base" >/dev/null 2>&1 || { echo "no local base $base (the base of $image)"; exit 1; }
work=$(mktemp -d)
trap 'git worktree remove --force "$work" >/dev/null 2>&1 || rm -rf "$work"' EXIT
git worktree add --quiet --detach "$work" "$commit"
echo "building $tag from $commit on $base"
# From the worktree, so that its enclave_tools (not this checkout's) is the one imported.
(cd "$work" && PYTHONPATH="$work" "$python" -m enclave_tools.cli image build --base "$base" --tag "$tag")
echo "$tag"
