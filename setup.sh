#!/usr/bin/env bash
# One-command setup on a fresh Debian/Ubuntu machine with Python 3.11 (CPU or CUDA GPU):
#   ./setup.sh            -> system packages (if root), .venv with the pinned stack
# Re-running is safe and fast when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# espeak-ng and sox make the Spanish and Mandarin speech the tests use; libsndfile decodes mp3/ogg/flac.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox >/dev/null
  fi
elif ! command -v espeak-ng >/dev/null; then
  echo "note: install espeak-ng and sox (e.g. sudo apt-get install espeak-ng sox) to run the tests" >&2
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# pip 26.3 refuses espnet's dependency ci_sdr (a direct-URL dependency); 26.2.1 accepts it.
"${PIP[@]}" pip==26.2.1
"${PIP[@]}" -r requirements.txt
# parallel_wavegan 0.6.1's setup.py imports pip and wheel, so it builds in this environment, not an isolated one.
"${PIP[@]}" wheel
"${PIP[@]}" --no-build-isolation parallel_wavegan==0.6.1
.venv/bin/python -m pip check
echo "setup done: activate with 'source .venv/bin/activate'"
