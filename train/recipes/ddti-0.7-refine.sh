#!/usr/bin/env bash
# The small-nodule candidate after model 0.7.0's student: a second stage trained on the boxes a first stage
# really draws (the fold teachers' out-of-fold masks, train.oof), free to shrink them, scored out of fold:
#   1. five fold second stages (two at a time on two cores), each cutting its crops around the out-of-fold
#      masks of the frames it trains on (--refine-boxes) and validated on its own fold's
#   2. python -m train.oof_refine: every labelled frame's first-stage map with its fold's second stage put in
#      the box (averaged, or in place), by nodule size, each at its best threshold -> runs/ddti-0.7/refine/report
#   3. with FINAL=1, and only if a blend beats the first stage alone out of fold: the final second stage on all
#      474 frames (--pool), kept in teachers/ddti-refine-SIZE/final with the out-of-fold report beside it, then
#      exported beside the student (teachers/ddti-student-160/student50) with those choices and scored on test
# Needs runs/ddti-0.7/oof (bash train/recipes/ddti-0.7.sh STOP_AFTER=oof makes it) unless the final second stage
# is kept already. Every step skips what is done and every training resumes, so after a stop the same command
# goes on where it was.
# Settings: EDGE_SEG_DDTI (the data), JOBS (parallel folds, default 2), SIZE (the crop's input, default 64,
# a multiple of 32: about 0.064 GMAC, so that the 0.401-GMAC student and it stay under 0.5 a scan), EPOCHS
# (default 20: about 42 minutes a fold on one thread beside another, so the five fit in a session).
set -euo pipefail
cd "$(dirname "$0")/../.."
DDTI=${EDGE_SEG_DDTI:-../shared/data/ddti}
JOBS=${JOBS:-2}
SIZE=${SIZE:-64}
EPOCHS=${EPOCHS:-20}
OOF=runs/ddti-0.7/oof
RUNS=runs/ddti-0.7/refine$SIZE
KEEP=teachers/ddti-refine-$SIZE
REPORT=$RUNS/report/oof_refine.json
[ -f "$KEEP/final/model.keras" ] && [ -f "$KEEP/oof_refine.json" ] && REPORT=$KEEP/oof_refine.json
RECIPE="--refine --refine-boxes $OOF/oof.npz --arch effl0-unet --input-size $SIZE --loss dice_bce --augment \
 --lr-schedule cosine --epochs $EPOCHS --view-passes 2 --monitor val_scan_dice --seed 42"
[ -f "$OOF/oof.npz" ] || [ "$REPORT" = "$KEEP/oof_refine.json" ] || { echo "no $OOF/oof.npz: run STOP_AFTER=oof bash train/recipes/ddti-0.7.sh first" >&2; exit 2; }
mkdir -p "$RUNS"
say() { echo "$(date -u +%H:%M:%S) ddti-0.7-refine: $*" >&2; }

fold() {
  local k=$1
  if [ -f "$RUNS/f$k/training.json" ]; then say "second stage f$k is done"; return 0; fi
  say "second stage f$k: training (log $RUNS/f$k.log)"
  # shellcheck disable=SC2086
  edge-seg-train --train "$DDTI/train" --val "$DDTI/val" --fold "$k" --folds 5 --out "$RUNS/f$k" \
    $RECIPE --threads 1 >> "$RUNS/f$k.log" 2>&1 \
    || { say "second stage f$k: training failed (exit $?), see $RUNS/f$k.log"; return 1; }
}
export -f fold say
export DDTI RUNS RECIPE
if [ "$REPORT" = "$KEEP/oof_refine.json" ]; then
  say "the final second stage and its out-of-fold report are kept in $KEEP"
else
  printf '%s\n' 0 1 2 3 4 | xargs -P "$JOBS" -I{} bash -c 'fold {}'
fi

if [ ! -f "$REPORT" ]; then
  say "out of fold: the first stage alone against both blends"
  python -m train.oof_refine "$OOF" "$RUNS"/f{0,1,2,3,4} --out "$RUNS/report" --threads "$JOBS" | tee "$RUNS/report.txt"
fi
[ "${FINAL:-}" = 1 ] || exit 0

# 3. (FINAL=1) the better blend, if it beats the first stage alone out of fold: one second stage on every
#    labelled frame (--pool, its last epoch), put beside the student with the thresholds chosen out of fold,
#    exported into runs/ and scored on test (report only)
read -r BLEND THRESHOLD BOX < <(python - "$REPORT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def dice(kind): return r[kind]["dice_by_threshold"][format(r[kind]["threshold"], "g")]
best = max(("mean", "replace"), key=dice)
print(best if dice(best) > dice("first stage") else "none", r[best]["threshold"], r["box_threshold"])
PY
)
if [ "$BLEND" = none ]; then say "the second stage does not beat the first stage alone out of fold: nothing more"; exit 0; fi
if [ ! -f "$KEEP/final/model.keras" ]; then
  say "final second stage on every labelled frame (blend $BLEND; log $RUNS/final.log)"
  # shellcheck disable=SC2086
  edge-seg-train --train "$DDTI/train" --val "$DDTI/val" --pool --out "$RUNS/final" $RECIPE --threads "$JOBS" \
    >> "$RUNS/final.log" 2>&1
  python -m train.archive "$RUNS/final" --to "$KEEP"
  cp "$REPORT" "$KEEP/oof_refine.json"
fi
STUDENT=teachers/ddti-student-160/student50  # kept by train/recipes/ddti-0.7.sh
[ -f "$STUDENT/model.keras" ] || { echo "no $STUDENT/model.keras: run bash train/recipes/ddti-0.7.sh first" >&2; exit 2; }
edge-seg-export "$STUDENT/model.keras" --refine "$KEEP/final/model.keras" --refine-blend "$BLEND" \
  --threshold "$THRESHOLD" --box-threshold "$BOX" --weights fp16 --out "$RUNS/ddti-fcn.onnx" \
  --fp32-out "$RUNS/ddti-fcn.fp32.onnx" --name ddti-fcn --model-version 0.7.0
edge-seg-eval --model "$RUNS/ddti-fcn.onnx" --images "$DDTI/test/image" --masks "$DDTI/test/mask" \
  --json "$RUNS/test-eval.json"
[ -d runs/ddti-0.7/views-neg ] || python -m train.views "$DDTI/test" --out runs/ddti-0.7/views-neg --only neg
edge-seg-eval --model "$RUNS/ddti-fcn.onnx" --images runs/ddti-0.7/views-neg/image --nodule-free --no-hd95 \
  --json "$RUNS/test-views-eval.json"
# the bundled form: a file a stage, each in a session of its own (outputs checked equal to the one graph's)
python -m export.stages "$RUNS/ddti-fcn.onnx" --out "$RUNS/apart/ddti-fcn.onnx"
say "done: $RUNS/ddti-fcn.onnx (student + second stage, $BLEND at $THRESHOLD, box at $BOX); bundled as the two files of $RUNS/apart/"
