#!/usr/bin/env bash
# Build the kernel image of an older commit, to measure the start figures against it in the
# same run (bench/run.py --baseline IMAGE):
#
#   bash bench/build_baseline.sh REF [TAG]   # TAG: enclave-tools/kernel:baseline-<REF's hash>
#
# The commit's own build code builds its own recipe, in a temporary worktree, on the local
# Debian base (make image bootstraps it); the image is then measured with today's client.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: bash bench/build_baseline.sh REF [TAG]}
commit=$(git rev-parse --verify --short "$ref^{commit}")
tag=${2:-enclave-tools/kernel:baseline-$commit}
base=$(.venv/bin/python -c 'from enclave_tools.image.bootstrap import BOOTSTRAP_BASE; print(BOOTSTRAP_BASE)')
docker image inspect "$base" >/dev/null 2>&1 || { echo "no local base $base: run make image first"; exit 1; }
work=$(mktemp -d)
trap 'git worktree remove --force "$work" >/dev/null 2>&1 || rm -rf "$work"' EXIT
git worktree add --quiet --detach "$work" "$commit"
echo "building $tag from $commit on $base"
python=$PWD/.venv/bin/python
# From the worktree, so that its enclave_tools (not this checkout's) is the one imported.
(cd "$work" && PYTHONPATH="$work" "$python" -m enclave_tools.cli image build --base "$base" --tag "$tag")
echo "$tag"
