#!/bin/sh
# test-lockstep.sh EAD: ead train against the PyTorch peer (../shared/bench/efficientad_ref.py)
# on real images, step by step.  bench/peer-train --lockstep gives the peer every random draw
# of `ead train --seed` (initial weights, image order across an epoch boundary, colour
# jitter, dropout masks) and --jitter-resized ead's place for the jitter, so the two runs
# must report the same hard, autoencoder and student-autoencoder losses at every step,
# through the learning-rate drop at 95 %.  Skipped without ../shared (data and peer) or
# without Debian's python3-torch.
EAD=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${EAD_SHARED_DATA:-$ROOT/../shared/data}/magnetic-tile-ad
PEER=${EAD_PEER:-$ROOT/../shared/bench/efficientad_ref.py}
if [ ! -d "$DATA/train/good" ] || [ ! -f "$PEER" ]; then
  echo "1..0 # SKIP ../shared (magnetic-tile-ad and the PyTorch peer) is not here"
  exit 0
fi
if ! /usr/bin/python3 -c "import torch, torchvision" 2>/dev/null; then
  echo "1..0 # SKIP /usr/bin/python3 has no torch/torchvision (tools/setup installs them)"
  exit 0
fi
. "$(dirname "$0")/cli-lib.sh"

# 20 good images: 18 train (so 20 steps cross into a second epoch), 2 validate
mkdir -p "$TMP/data/train/good"
for image in $(ls "$DATA/train/good" | sort | head -n 20); do
  ln -s "$DATA/train/good/$image" "$TMP/data/train/good/$image"
done
TEACHER=$ROOT/data/teachers/teacher-s.ead.safetensors
STEPS=20
SEED=3

check "ead train runs $STEPS steps" \
  "$EAD" train --data "$TMP/data" --model s --steps $STEPS --seed $SEED --threads 2 \
  --teacher "$TEACHER" --checkpoint-every 0 --log-every 1 --json --out "$TMP/ours.ead.safetensors"
cp "$TMP/out" "$TMP/ours.json"
check "the peer runs the same $STEPS steps in lockstep" \
  /usr/bin/python3 "$ROOT/bench/peer-train" --lockstep $SEED --jitter-resized --model s \
  --steps $STEPS --threads 2 --teacher "$TEACHER" --data "$TMP/data" --out "$TMP/peer" \
  --log-every 1 --no-eval --cache-teacher

# The peer prints six decimals.  Equal within 1e-3 relative (or half the peer's last digit):
# the runs drift apart by float rounding (after 20 steps up to 5e-5 relative in the hard
# loss, a few 1e-4 in the small student-autoencoder loss), while one wrong draw (image,
# jitter, dropout mask) or a wrong learning rate moves a loss by percents.
if /usr/bin/python3 - "$TMP/ours.json" "$TMP/peer/losses.csv" $STEPS > "$TMP/compare" 2>&1 <<'PY'
import csv, json, sys
ours = [json.loads(line) for line in open(sys.argv[1])]
ours = {e['step']: e for e in ours if e.get('phase') == 'training'}
peer = {int(r['step']): r for r in csv.DictReader(open(sys.argv[2]))}
steps = int(sys.argv[3])
bad = 0
worst = {}
for step in range(1, steps + 1):
    for key in ('loss_hard', 'loss_ae', 'loss_stae'):
        a, b = ours[step][key], float(peer[step][key])
        worst[key] = max(worst.get(key, 0.0), abs(a - b) / abs(b))
        if abs(a - b) > 1e-3 * abs(b) + 5e-7:
            print('step %d %s: ead %.7g, peer %.7g' % (step, key, a, b))
            bad += 1
print('%d steps; largest relative differences: %s' % (
    steps, ', '.join('%s %.1e' % (k[5:], v) for k, v in worst.items())))
sys.exit(1 if bad else 0)
PY
then
  ok "the losses of every step agree with the peer's ($(tail -n 1 "$TMP/compare"))"
else
  not_ok "the losses agree with the peer's"
  show "$TMP/compare"
fi
tap_end
