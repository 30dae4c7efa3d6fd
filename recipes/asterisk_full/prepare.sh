#!/usr/bin/env bash
# Install the full Asterisk English prompt corpus (Allison Smith, CC-BY-SA-3.0) from Debian/Ubuntu
# and print its folder on stdout, so that `CORPUS=$(recipes/asterisk_full/prepare.sh)` works.
#
# The package `asterisk-core-sounds-en-wav` puts 568 8 kHz 16-bit mono WAV files (about 25 min)
# under /usr/share/asterisk/sounds/en_US_f_Allison. Its `silence/` sub-folder (10 files, 55 s of
# near-silence: samples within +-2 of 0) is not speech; the recipes read it as part of the corpus.
# Needs root (or sudo) and apt-get. Safe to run again: apt-get skips an installed package.
set -euo pipefail

PACKAGE=asterisk-core-sounds-en-wav
CORPUS_DIR=/usr/share/asterisk/sounds/en_US_f_Allison

log() { echo "prepare.sh: $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not found: this recipe needs a Debian or Ubuntu system (package $PACKAGE)."
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "run as root (or install sudo): apt-get needs root to install $PACKAGE."
        exit 1
    fi
fi

if dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q "install ok installed"; then
    log "$PACKAGE is already installed."
else
    log "installing $PACKAGE ..."
    "${SUDO[@]}" apt-get update >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$PACKAGE" >&2  # env: sudo drops a variable set before it
fi

if [ ! -d "$CORPUS_DIR" ]; then
    log "expected the corpus at $CORPUS_DIR but it is missing; list the package's files with" \
        "'dpkg -L $PACKAGE' and pass the folder that holds the .wav files to the trainer."
    exit 1
fi

n_files=$(find "$CORPUS_DIR" -name '*.wav' | wc -l)
log "corpus: $n_files WAV files (8 kHz, 16-bit, mono) under $CORPUS_DIR (includes silence/)."
echo "$CORPUS_DIR"
