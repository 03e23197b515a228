#!/usr/bin/env bash
# Rebuilds the six packages in model_packages/ from scratch, on CPU, with the CartoCell
# phases: M1 on curated cysts -> pseudo-labels of train_M2 -> six M2 variants.
# Run from the repository root: bash model_packages/rebuild.sh   (about an hour on 2 cores)
#
# bash model_packages/rebuild.sh --descriptions-only   (seconds) rewrites only each package's
# rdf.yaml with today's description rules (format 0.5.7, tags, BiaPy's out_channels list, test-set
# figures from documentation.md, today's architecture file) and leaves weights and test tensors
# byte for byte (cartocell_bmz.bmz.portable.refresh_description).
#
# bash model_packages/rebuild.sh --add-onnx   (a minute) adds weights.onnx to each package that has none,
# exported from its own state dict and checked on its own test input (within 1e-4 of the state dict),
# and its onnx entry to rdf.yaml; every other file is kept byte for byte (cartocell_bmz.bmz.portable.add_onnx).
set -euo pipefail
if [[ "${1:-}" == "--add-onnx" ]]; then
  for rdf in model_packages/*/rdf.yaml; do
    python -c "import sys; from cartocell_bmz.bmz.portable import add_onnx; print(add_onnx(sys.argv[1]))" "$(dirname "$rdf")"
  done
  exit 0
fi
if [[ "${1:-}" == "--descriptions-only" ]]; then
  for rdf in model_packages/*/rdf.yaml; do
    python -c "import sys; from cartocell_bmz.bmz.portable import refresh_description as r; print(r(sys.argv[1]))" "$(dirname "$rdf")"
  done
  exit 0
fi
DATA=data/synthetic
RUNS=runs/synthetic
TRAIN=(--preset tiny --patch 32 64 64 --epochs 40 --seed 0 --device cpu)

# 1. synthetic CartoCell-layout dataset (40 x 96 x 96 cysts, 4/2/8/4 volumes)
cartocell-bmz phantoms "$DATA" --seed 0
# 2. M1: residual U-Net on train_M1
cartocell-bmz train --train "$DATA/train_M1" --val "$DATA/validation" --arch resunet "${TRAIN[@]}" --out "$RUNS/M1"
# 3. pseudo-labels of train_M2 (prediction + watershed + Voronoi with M1)
cartocell-bmz pseudo-label --model "$RUNS/M1" --input "$DATA/train_M2/x" --out "$RUNS/pseudo_labels"
# 4. M2 variants on the pseudo-labels, 5. packages with their synthetic test-set figures.
#    The tiny preset gives the squeeze-and-excitation networks a local window (se_window 3 5 5)
#    and ResUNet++ ASPP rates 1 2 3, so that every package's halo is measured and tiles exactly.
for arch in unet attention_unet seunet resunetpp resunet resunet_se; do
  cartocell-bmz train --train "$RUNS/pseudo_labels" --val "$DATA/validation" --arch "$arch" "${TRAIN[@]}" --out "$RUNS/M2_$arch"
  name="synthetic-${arch//_/-}"
  # synthetic test-set figures of the run (prediction + watershed + Voronoi + evaluation)
  python -c "from cartocell_bmz.phases.pipeline import evaluate_run; evaluate_run('$RUNS/M2_$arch', '$DATA/test', '$RUNS/eval_$arch', device='cpu')"
  cartocell-bmz package "$RUNS/M2_$arch" --out "model_packages/$name" --format folder \
    --test-figures "$RUNS/eval_$arch/summary.json"
done
