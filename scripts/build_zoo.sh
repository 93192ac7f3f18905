#!/usr/bin/env bash
# Rebuild the embedded zoo from scratch with fixed seeds: the original digits ViT, then every
# compressed family trained from it. Each command records itself in the manifest it writes.
# Usage: bash scripts/build_zoo.sh [OUT_DIR]   (default: the package's shipped weights folder)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-edgeattack/zoo/weights}"
export OMP_WAIT_POLICY=PASSIVE

edgeattack train vit_tiny_digits --out "$out" --data digits --seed 0 --epochs 60 --batch-size 64 --lr 0.002
teacher=(--teacher vit_tiny_digits --checkpoint "$out/vit_tiny_digits.safetensors")
for rho in 0.7 0.6 0.5; do
    edgeattack compress --method dynamicvit --rho "$rho" "${teacher[@]}" --out "$out" --seed 0
done
edgeattack compress --method minivit --epochs 10 "${teacher[@]}" --out "$out" --seed 0
edgeattack compress --method sparse24 --epochs 10 "${teacher[@]}" --out "$out" --seed 0
edgeattack compress --method distill --epochs 60 "${teacher[@]}" --out "$out" --seed 0
edgeattack compress --method adavit --epochs 25 "${teacher[@]}" --out "$out" --seed 0
edgeattack compress --method avit --epochs 20 "${teacher[@]}" --out "$out" --seed 0
