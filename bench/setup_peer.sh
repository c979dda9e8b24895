#!/usr/bin/env bash
# Make bench/.venv-peer: ms-enclave (the peer we compare with) in its own virtual
# environment, so its dependencies never mix with ours. bench/run.py runs this when the
# environment is missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VERSION="${MS_ENCLAVE_VERSION:-0.0.8}"
rm -rf .venv-peer
"$PYTHON" -m venv .venv-peer
.venv-peer/bin/pip install --quiet --disable-pip-version-check "ms-enclave[docker]==${VERSION}"
.venv-peer/bin/python -c 'import ms_enclave, docker, websocket; print("ms-enclave", ms_enclave.__version__ if hasattr(ms_enclave, "__version__") else "installed")'
