#!/usr/bin/env bash
# One-command setup on a fresh Debian/Ubuntu machine with Python 3.11 (CPU or CUDA GPU):
#   ./setup.sh            -> system packages (if root), .venv with the pinned stack
# Re-running is safe and fast when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# System packages (Debian/Ubuntu), each checked on its own so a re-run installs only what is missing:
#   espeak-ng       Spanish and Mandarin speech for the tests, the shipped samples and benchmarks
#   sox             converts and cuts test audio (rates, channels, flac/ogg)
#   libsox-fmt-mp3  sox's mp3 handler: the Common Voice fixture is mp3, as Common Voice is
#   git             step tasks record the repository and commit; agents clone it
# The product itself decodes audio with the libsndfile bundled in the soundfile wheel (wav, flac, ogg, mp3).
SYSTEM_PACKAGES=(espeak-ng sox libsox-fmt-mp3 git)
missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: the tests need these system packages: sudo apt-get install ${missing[*]}" >&2
  fi
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
# clearml-agent in its own venv (see requirements-agent.txt): tests/test_pipeline_agents.py runs its daemons.
[ -x .venv-agent/bin/python ] || "$PYTHON" -m venv .venv-agent
.venv-agent/bin/python -m pip install -q --disable-pip-version-check -r requirements-agent.txt
.venv-agent/bin/python -m pip check
echo "setup done: activate with 'source .venv/bin/activate'"
