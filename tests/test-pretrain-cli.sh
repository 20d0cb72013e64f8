#!/bin/sh
# `ead teacher pretrain` end to end, small: the tiny ResNet of tests/fixtures/pretrain on a
# few demo images (PDN-small at 256 x 256, batch 1).  An uninterrupted run and a run
# interrupted with SIGINT (exit 130, checkpoint written, says how to continue) then resumed
# write the same bundle, byte for byte; `ead train --teacher` accepts it; --json ends with
# a done event; a missing backbone, a state_dict that is not a ResNet, an empty folder, an
# unknown layer and missing options are refused with a clear message, exit code 1 or 2, and
# no GLib warning.  Output: TAP.
set -u
. "$(dirname "$0")/cli-lib.sh"
EAD=$1
BACKBONE=$EAD_TEST_FIXTURES/pretrain/backbone.pth
NOT_RESNET=$EAD_TEST_FIXTURES/pth/tiny-s-nelson.pth

# same_but_command A B: two bundles hold the same bytes but for the command each records:
# the tensors byte for byte, and the JSON headers without ead.pretrain.command and the
# padding (FILE.header and FILE.data are left next to each)
same_but_command() {
  for f in "$1" "$2"; do
    length=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    tail -c +$((9 + length)) "$f" >"$f.data"
    head -c $((8 + length)) "$f" | tail -c "$length" >"$f.header"
  done
  cmp "$1.data" "$2.data" || return 1
  for f in "$1" "$2"; do
    sed -e 's/"ead.pretrain.command":"[^"]*",\{0,1\}//' -e 's/ *$//' "$f.header" >"$f.rest"
  done
  cmp "$1.rest" "$2.rest"
}

check "demo images" "$EAD" demo --scenes surface --train 10 --test-good 1 --test-defect 1 "$TMP/demo"
IMAGES=$TMP/demo/surface
set -- "$EAD" teacher pretrain --backbone "$BACKBONE" --images "$IMAGES" --steps 4 --batch 1 \
  --stats-images 1 --checkpoint-every 1 --threads 2 --log-every 1
A=$TMP/a.ead.safetensors
B=$TMP/b.ead.safetensors

check "uninterrupted distillation" "$@" --out "$A"
[ -s "$A" ] && [ ! -e "$A.checkpoint" ] && grep -q "^step 4/4 loss" "$TMP/out" \
  && ok "bundle written, progress lines, checkpoint removed" \
  || not_ok "bundle written, progress lines, checkpoint removed"

# B: interrupted with SIGINT once a checkpoint exists ...
"$@" --out "$B" >"$TMP/b1.out" 2>"$TMP/b1.err" &
pid=$!
if wait_step "$B.checkpoint" 1; then
  kill -INT "$pid"
  wait "$pid"
  code=$?
  step=$(checkpoint_step "$B.checkpoint")
  cp "$B.checkpoint" "$TMP/interrupted.checkpoint"
  if [ "$code" -eq 130 ] && grep -q "continue with --resume" "$TMP/b1.err" && glib_clean "$TMP/b1.err" \
    && [ -n "$step" ] && [ "$step" -lt 4 ] && [ ! -e "$B" ]; then
    ok "SIGINT exits 130, leaves the checkpoint of step $step and says how to continue"
  else
    not_ok "SIGINT exits 130, leaves a checkpoint and says how to continue (exit $code, step $step)"
    show "$TMP/b1.err"
  fi
else
  wait "$pid"
  not_ok "a checkpoint appears within 2 minutes"
  show "$TMP/b1.err"
fi
pid=

# ... and resumed to the end
check "resumed to the end" "$@" --out "$B" --resume
if same_but_command "$A" "$B" >"$TMP/cmp" 2>&1 && grep -q '"ead.pretrain.command":"[^"]* --resume"' "$B.header"; then
  ok "interrupted and resumed: the same bundle as uninterrupted (but the command it records)"
else
  not_ok "interrupted and resumed: the same bundle as uninterrupted (but the command it records)"
  show "$TMP/cmp"
fi

check "ead train --teacher takes the distilled teacher" \
  "$EAD" train --data "$IMAGES" --teacher "$A" --steps 1 --checkpoint-every 0 --threads 2 \
  --out "$TMP/model.ead.safetensors"

"$EAD" teacher pretrain --backbone "$BACKBONE" --images "$IMAGES" --layers layer3 --steps 1 \
  --batch 1 --stats-images 1 --checkpoint-every 0 --threads 2 --json --out "$TMP/c.ead.safetensors" \
  >"$TMP/out" 2>"$TMP/err"
code=$?
if [ "$code" -eq 0 ] && tail -n 1 "$TMP/out" | grep -q '"event":"done".*"layers":"layer3"' && glib_clean "$TMP/err"; then
  ok "--json ends with a done event"
else
  not_ok "--json ends with a done event (exit $code)"
  show "$TMP/out"
  show "$TMP/err"
fi

# teacher bundles: the teacher only, fp16 with --half; a checkpoint's teacher can be tried
check "ead teacher pack --half" "$EAD" teacher pack "$A" --half --out "$TMP/a16.ead.safetensors"
size_a=$(wc -c <"$A")
size_16=$(wc -c <"$TMP/a16.ead.safetensors")
if [ "$size_a" -lt 12000000 ] && [ $((size_16 * 2)) -lt $((size_a + 65536)) ] \
  && grep -q "fp16, sha256 $("$EAD" info --json "$TMP/a16.ead.safetensors" | grep -o '"ead.teacher.sha256" *: *"[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}'))" "$TMP/out"; then
  ok "a teacher bundle holds the teacher only ($size_a bytes), half as much in fp16 ($size_16)"
else
  not_ok "a teacher bundle holds the teacher only ($size_a bytes), half as much in fp16 ($size_16)"
fi
check "ead info of a teacher" "$EAD" info "$TMP/a16.ead.safetensors"
grep -q "^  content      a teacher only" "$TMP/out" && grep -q "^  teacher      ead teacher pretrain: backbone.pth" "$TMP/out" \
  && ok "ead info says it is a teacher, and which" || { not_ok "ead info says it is a teacher, and which"; show "$TMP/out"; }
refuses "a teacher is not a model for ead infer" "train a model with it first (ead train --teacher)" \
  "$EAD" infer --model "$TMP/a16.ead.safetensors" "$IMAGES"
if [ -f "$TMP/interrupted.checkpoint" ]; then
  check "ead teacher pack of a running distillation's checkpoint" \
    "$EAD" teacher pack "$TMP/interrupted.checkpoint" --half --out "$TMP/ckpt.ead.safetensors"
  "$EAD" info "$TMP/ckpt.ead.safetensors" >"$TMP/out" 2>&1
  grep -q "^  teacher      ead teacher pretrain checkpoint at step $step (pretrain efficientad-s " "$TMP/out" \
    && ok "the checkpoint's teacher names its step" || { not_ok "the checkpoint's teacher names its step"; show "$TMP/out"; }
  # no schedule depends on --steps: a run of $step steps ends where the checkpoint stood
  "$EAD" teacher pretrain --backbone "$BACKBONE" --images "$IMAGES" --steps "$step" --batch 1 \
    --stats-images 1 --checkpoint-every 0 --threads 2 --half --out "$TMP/short.ead.safetensors" \
    >"$TMP/short.out" 2>&1
  short=$("$EAD" info --json "$TMP/short.ead.safetensors" | grep -o '"ead.teacher.sha256" *: *"[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}')
  [ -n "$short" ] && grep -q "sha256 $short)" "$TMP/short.out" \
    && ok "pretrain --half prints the digest of the teacher as stored" \
    || { not_ok "pretrain --half prints the digest of the teacher as stored ($short)"; show "$TMP/short.out"; }
  packed=$("$EAD" info --json "$TMP/ckpt.ead.safetensors" | grep -o '"ead.teacher.sha256" *: *"[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}')
  [ -n "$short" ] && [ "$short" = "$packed" ] \
    && ok "the checkpoint's teacher is the teacher of a $step-step run" \
    || not_ok "the checkpoint's teacher is the teacher of a $step-step run ($packed vs $short)"
  check "ead train --teacher takes the checkpoint's teacher" \
    "$EAD" train --data "$IMAGES" --teacher "$TMP/ckpt.ead.safetensors" --steps 1 --checkpoint-every 0 \
    --threads 2 --out "$TMP/model2.ead.safetensors"
fi
refuses "pack of something else" "not a safetensors file" \
  "$EAD" teacher pack "$BACKBONE" --out "$TMP/x.ead.safetensors"

mkdir "$TMP/empty"
set -- --steps 1 --batch 1 --stats-images 1 --threads 2 --out "$TMP/e.ead.safetensors"
refuses "a missing backbone" "resnet101.pth" \
  "$EAD" teacher pretrain --backbone "$TMP/resnet101.pth" --images "$IMAGES" "$@"
refuses "a state_dict that is not a ResNet" "not the state_dict of a torchvision ResNet" \
  "$EAD" teacher pretrain --backbone "$NOT_RESNET" --images "$IMAGES" "$@"
refuses "an empty image folder" "no images" \
  "$EAD" teacher pretrain --backbone "$BACKBONE" --images "$TMP/empty" "$@"
refuses "an unknown layer" "'layer7' in 'layer2,layer7' is not a backbone level" \
  "$EAD" teacher pretrain --backbone "$BACKBONE" --images "$IMAGES" --layers layer2,layer7 "$@"
refuses "a learning rate of 0" "--learning-rate between 0 and 1" \
  "$EAD" teacher pretrain --backbone "$BACKBONE" --images "$IMAGES" --learning-rate 0 "$@"
refuses "no --out" "expected --backbone FILE.pth, --images DIR and --out BUNDLE" \
  "$EAD" teacher pretrain --backbone "$BACKBONE" --images "$IMAGES"
[ ! -e "$TMP/e.ead.safetensors" ] && ok "no bundle from a refused run" || not_ok "no bundle from a refused run"

tap_end
