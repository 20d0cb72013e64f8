#!/bin/sh
# End-to-end reliability of `ead train`: a run killed with SIGKILL, resumed, interrupted
# with SIGINT (exit 130, checkpoint written) and resumed again writes the same bundle, byte
# for byte, as an uninterrupted run; an unreadable image is reported by name and skipped
# (or refused with --strict); an empty folder, too few images and a too small network
# input are refused with a clear message, exit code 1 or 2, and no GLib warning.  `ead eval`
# reports every defect kind, whose metrics are the pooled ones when it is the only kind.
# Output: TAP.
set -u
. "$(dirname "$0")/cli-lib.sh"
EAD=$1

check "demo dataset" "$EAD" demo --scenes surface --train 14 --test-good 2 --test-defect 1 "$TMP/demo"
DATA=$TMP/demo/surface
set -- "$EAD" train --data "$DATA" --steps 12 --checkpoint-every 4 --threads 2 --log-every 1
A=$TMP/a.ead.safetensors
B=$TMP/b.ead.safetensors

# A: uninterrupted
check "uninterrupted training" "$@" --out "$A"
[ -s "$A" ] && [ ! -e "$A.checkpoint" ] && ok "bundle written, checkpoint removed" \
  || not_ok "bundle written, checkpoint removed"
# without --teacher: the bundled default teacher, named on stderr and in the bundle
"$EAD" info "$A" >"$TMP/info" 2>&1
if grep -q "teacher .*teachers/teacher-s.ead.safetensors (the default" "$TMP/err" \
  && grep -q "^  teacher      default teacher .*teachers/teacher-s.ead.safetensors: " "$TMP/info"; then
  ok "the default teacher is used and named"
else
  not_ok "the default teacher is used and named"; show "$TMP/err"; show "$TMP/info"
fi

# B: killed with SIGKILL once a checkpoint exists ...
"$@" --out "$B" >"$TMP/b1.out" 2>"$TMP/b1.err" &
pid=$!
if wait_step "$B.checkpoint" 4; then
  kill -9 "$pid"
  wait "$pid" 2>/dev/null  # without the shell's "Killed"
  code=$?
  killed_at=$(checkpoint_step "$B.checkpoint")
  [ "$code" -eq 137 ] && [ ! -e "$B" ] && ok "killed with SIGKILL after the checkpoint of step $killed_at" \
    || not_ok "killed with SIGKILL (exit $code)"
else
  wait "$pid"
  killed_at=0
  not_ok "a checkpoint appears within 3 minutes"
  show "$TMP/b1.err"
fi
pid=

# ... resumed, and interrupted with SIGINT after a later checkpoint ...
"$@" --out "$B" --resume >"$TMP/b2.out" 2>"$TMP/b2.err" &
pid=$!
if wait_step "$B.checkpoint" $((killed_at + 4)); then
  kill -INT "$pid"
  wait "$pid"
  code=$?
  if [ "$code" -eq 130 ] && grep -q "continue with --resume" "$TMP/b2.err" && glib_clean "$TMP/b2.err"; then
    ok "SIGINT exits 130 and says how to continue"
  else
    not_ok "SIGINT exits 130 and says how to continue (exit $code)"
    show "$TMP/b2.err"
  fi
  step=$(checkpoint_step "$B.checkpoint")
  [ -n "$step" ] && [ "$step" -ge $((killed_at + 4)) ] && [ "$step" -lt 12 ] && [ ! -e "$B" ] \
    && ok "SIGINT left a checkpoint (step $step)" || not_ok "SIGINT left a checkpoint (step $step)"
else
  wait "$pid"
  not_ok "the resumed run writes a checkpoint past step $((killed_at + 4))"
  show "$TMP/b2.err"
fi
pid=

# ... and resumed to the end
check "resumed to the end" "$@" --out "$B" --resume
[ ! -e "$B.checkpoint" ] && ok "checkpoint removed at the end" || not_ok "checkpoint removed at the end"
if cmp "$A" "$B" >"$TMP/cmp" 2>&1; then
  ok "killed, interrupted and resumed: the same bundle as uninterrupted"
else
  not_ok "killed, interrupted and resumed: the same bundle as uninterrupted"
  show "$TMP/cmp"
fi

# --json progress events give the mean loss of the steps since the previous event: the
# mean of the events at steps 3 and 6 is the mean of all 6 steps, which the bundle records
"$EAD" train --data "$DATA" --steps 6 --threads 2 --checkpoint-every 0 --log-every 3 --json \
  --out "$TMP/j.ead.safetensors" >"$TMP/j.json" 2>"$TMP/err"
events=$(grep -c '"phase":"training"' "$TMP/j.json")
mean=$(grep '"phase":"training"' "$TMP/j.json" | sed 's/.*"loss":\([^,]*\),.*/\1/' \
  | awk '{ s += $1; n++ } END { if (n) printf "%.9g", s / n }')
final=$("$EAD" info --json "$TMP/j.ead.safetensors" | tr -d ' ' \
  | sed -n 's/.*"ead.train.loss.final":"\([^"]*\)".*/\1/p')
if [ "$events" -eq 2 ] && [ -n "$mean" ] && [ -n "$final" ] \
  && awk -v a="$mean" -v b="$final" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * b) }'; then
  ok "progress events carry mean losses ($mean over the run, bundle $final)"
else
  not_ok "progress events carry mean losses (events $events, mean '$mean', bundle '$final')"
  show "$TMP/j.json"; show "$TMP/err"
fi

# an unreadable image: reported by name, skipped; refused with --strict
mkdir "$TMP/corrupt"
cp "$DATA"/train/good/*.png "$TMP/corrupt/"
printf 'not a PNG at all, just some text that pretends to be one\n' >"$TMP/corrupt/zz-broken.png"
"$EAD" train --data "$TMP/corrupt" --steps 1 --threads 2 --checkpoint-every 0 \
  --out "$TMP/c.ead.safetensors" >"$TMP/out" 2>"$TMP/err"
code=$?
if [ "$code" -eq 0 ] && [ -s "$TMP/c.ead.safetensors" ] && grep -q "skipped .*zz-broken.png" "$TMP/err" \
  && glib_clean "$TMP/err"; then
  ok "a corrupt image is reported by name and skipped"
else
  not_ok "a corrupt image is reported by name and skipped (exit $code)"
  show "$TMP/err"
fi
refuses "--strict refuses a corrupt image by name" "zz-broken.png" \
  "$EAD" train --data "$TMP/corrupt" --strict --steps 1 --threads 2 --out "$TMP/d.ead.safetensors"

# too little data, too small an input
mkdir "$TMP/empty" "$TMP/nine"
i=0
for f in "$DATA"/train/good/*.png; do
  [ "$i" -lt 9 ] && cp "$f" "$TMP/nine/"
  i=$((i + 1))
done
refuses "an empty folder" "no images" \
  "$EAD" train --data "$TMP/empty" --steps 1 --threads 2 --out "$TMP/e.ead.safetensors"
refuses "9 images" "9 readable images; training needs at least 10" \
  "$EAD" train --data "$TMP/nine" --steps 1 --threads 2 --out "$TMP/e.ead.safetensors"
refuses "--input-size 128" "input-size 128" \
  "$EAD" train --data "$DATA" --input-size 128 --steps 1 --threads 2 --out "$TMP/e.ead.safetensors"
[ ! -e "$TMP/e.ead.safetensors" ] && ok "no bundle from a refused run" || not_ok "no bundle from a refused run"

# ead eval: the pooled metrics and each defect kind's (its images against the good ones)
check "eval" "$EAD" eval --model "$A" --data "$DATA" --threads 2
kinds=$(sed -n '/each defect kind/,$p' "$TMP/out" | awk 'NF == 4 && $2 ~ /^[0-9.]+$/ {print $1}' | tr '\n' ' ')
[ "$kinds" = "crack missing_material scratch spot " ] && ok "eval lists every defect kind with three metrics" \
  || { not_ok "eval lists every defect kind with three metrics ($kinds)"; show "$TMP/out"; }
# with one defect kind the kind's metrics are the pooled ones
mkdir -p "$TMP/one/test" "$TMP/one/ground_truth"
cp -r "$DATA/test/good" "$DATA/test/spot" "$TMP/one/test/"
cp -r "$DATA/ground_truth/spot" "$TMP/one/ground_truth/"
check "eval on one defect kind" "$EAD" eval --model "$A" --data "$TMP/one" --threads 2
pooled=$(awk '/^  image AU-ROC/ {i = $3} /^  pixel AU-ROC/ {p = $3} /^  AU-PRO/ {a = $3} END {print i, p, a}' "$TMP/out")
spot=$(awk '$1 == "spot" {print $2, $3, $4}' "$TMP/out")
[ -n "$spot" ] && [ "$pooled" = "$spot" ] && ok "one defect kind: its metrics are the pooled ones ($spot)" \
  || { not_ok "one defect kind: its metrics are the pooled ones ($pooled vs $spot)"; show "$TMP/out"; }
# --defects spot on the whole category: the same images, so the same metrics
check "eval --defects spot" "$EAD" eval --model "$A" --data "$DATA" --defects spot --threads 2
chosen=$(awk '/^  image AU-ROC/ {i = $3} /^  pixel AU-ROC/ {p = $3} /^  AU-PRO/ {a = $3} END {print i, p, a}' "$TMP/out")
kinds=$(sed -n '/each defect kind/,$p' "$TMP/out" | awk 'NF == 4 && $2 ~ /^[0-9.]+$/ {print $1}' | tr '\n' ' ')
[ "$kinds" = "spot " ] && [ "$chosen" = "$pooled" ] && ok "eval --defects spot: only spot, metrics of the spot-only copy" \
  || { not_ok "eval --defects spot: only spot, metrics of the spot-only copy ($kinds: $chosen vs $pooled)"; show "$TMP/out"; }
refuses "eval --defects with an unknown kind" "no defect kind 'dent' (the kinds here: crack, missing_material, scratch, spot)" \
  "$EAD" eval --model "$A" --data "$DATA" --defects spot,dent
# a kind without masks has no pixel metrics, the others keep theirs
rm -r "$TMP/one/ground_truth/spot"
cp -r "$DATA/test/crack" "$TMP/one/test/" && cp -r "$DATA/ground_truth/crack" "$TMP/one/ground_truth/"
check "eval with a kind without masks" "$EAD" eval --model "$A" --data "$TMP/one" --threads 2 --json
grep -A4 '"class" : "spot"' "$TMP/out" | grep -q '"pixel_auroc" : null' \
  && grep -A4 '"class" : "crack"' "$TMP/out" | grep -q '"pixel_auroc" : 0\.[0-9]' \
  && ok "a kind without masks: pixel metrics null, the other kind's kept" \
  || { not_ok "a kind without masks: pixel metrics null, the other kind's kept"; show "$TMP/out"; }
refuses "eval without test/" "no test/ folder" "$EAD" eval --model "$A" --data "$TMP/one/test"
mask=$(ls "$TMP/one/ground_truth/crack/"*_mask.png | head -n 1)
"$EAD" demo --scenes surface --train 1 --test-good 1 --test-defect 1 --size 96 "$TMP/small" >/dev/null
cp "$TMP/small/surface/ground_truth/crack/"*_mask.png "$mask"
refuses "eval: a mask of another size" "the mask is 96x96" "$EAD" eval --model "$A" --data "$TMP/one"

tap_end
