#!/bin/sh
# End-to-end checks of the `ead` command line: help and version everywhere, a model
# bundle made and described, images scored with heatmaps written, and every kind of bad
# input refused with a message that names the file, a non-zero exit code and no crash.
# Output: TAP.
set -u
. "$(dirname "$0")/cli-lib.sh"
EAD=$1
FIX=${EAD_TEST_FIXTURES:?}/cli

for cmd in "model new" info infer bench; do
  # shellcheck disable=SC2086
  check "ead $cmd --help" $EAD $cmd --help
  # shellcheck disable=SC2086
  check "ead $cmd --version" $EAD $cmd --version
done
check "ead --version" "$EAD" --version
grep -q '^ead [0-9]' "$TMP/out" && ok "version printed" || not_ok "version printed"
refuses "unknown command" "unknown command" "$EAD" frobnicate
refuses "unknown option" "Unknown option" "$EAD" infer --frob

check "model new" "$EAD" model new --model s --seed 3 --out "$TMP/s.ead.safetensors"
check "info" "$EAD" info "$TMP/s.ead.safetensors"
grep -q "efficientad-s" "$TMP/out" && ok "info names the architecture" || not_ok "info names the architecture"
check "info --json" "$EAD" info --json "$TMP/s.ead.safetensors"
grep -q '"parameters" : 8057856' "$TMP/out" && ok "info counts 8,057,856 parameters" \
  || { not_ok "info counts 8,057,856 parameters"; sed 's/^/# /' "$TMP/out"; }

check "infer png+jpeg with maps" "$EAD" infer --model "$TMP/s.ead.safetensors" --maps "$TMP/maps" \
  --batch 2 --threads 2 "$FIX/surface.png" "$FIX/surface.jpg"
[ -s "$TMP/maps/surface.heatmap.png" ] && [ -s "$TMP/maps/surface-2.heatmap.png" ] \
  && ok "a heatmap per image" || not_ok "a heatmap per image"
check "heatmap is a readable image" "$EAD" infer --model "$TMP/s.ead.safetensors" \
  "$TMP/maps/surface.heatmap.png"
check "infer --json" "$EAD" infer --json --model "$TMP/s.ead.safetensors" "$FIX/surface.png"
grep -q '"score"' "$TMP/out" && ok "json has a score" || not_ok "json has a score"

# bad images: each refused by name, the run goes on for the good ones and exits 1
head -c 3000 "$FIX/surface.png" > "$TMP/truncated.png"
: > "$TMP/empty.png"
cp "$FIX/surface.jpg" "$TMP/garbage.jpg"
# overwrite entropy-coded data in the middle of the JPEG with garbage
dd if=/dev/urandom of="$TMP/garbage.jpg" bs=1 seek=6000 count=4000 conv=notrunc 2>/dev/null
echo "not an image" > "$TMP/text.png"
mkdir "$TMP/folder.png"
refuses "truncated PNG" "truncated.png" "$EAD" infer --model "$TMP/s.ead.safetensors" "$TMP/truncated.png"
refuses "0-byte file" "empty.png" "$EAD" infer --model "$TMP/s.ead.safetensors" "$TMP/empty.png"
refuses "JPEG with garbage" "garbage.jpg" "$EAD" infer --model "$TMP/s.ead.safetensors" "$TMP/garbage.jpg"
refuses "60000x60000 header" "huge-header.png" "$EAD" infer --model "$TMP/s.ead.safetensors" "$FIX/huge-header.png"
refuses "not an image" "text.png" "$EAD" infer --model "$TMP/s.ead.safetensors" "$TMP/text.png"
refuses "a directory" "folder.png" "$EAD" infer --model "$TMP/s.ead.safetensors" "$TMP/folder.png"
refuses "a missing file" "missing.png" "$EAD" infer --model "$TMP/s.ead.safetensors" "$TMP/missing.png"
refuses "good and bad images together" "empty.png" "$EAD" infer --model "$TMP/s.ead.safetensors" \
  "$FIX/surface.png" "$TMP/empty.png"
grep -q "surface.png" "$TMP/out" && ok "the good image is still scored" || not_ok "the good image is still scored"

# bad bundles
head -c 4 "$TMP/s.ead.safetensors" > "$TMP/short.ead.safetensors"
head -c 1000 "$TMP/s.ead.safetensors" > "$TMP/header.ead.safetensors"
head -c 3000000 "$TMP/s.ead.safetensors" > "$TMP/data.ead.safetensors"
refuses "bundle with a truncated header" "header.ead.safetensors" "$EAD" info "$TMP/header.ead.safetensors"
refuses "bundle of 4 bytes" "short.ead.safetensors" "$EAD" info "$TMP/short.ead.safetensors"
refuses "bundle with truncated data" "data.ead.safetensors" "$EAD" infer --model "$TMP/data.ead.safetensors" "$FIX/surface.png"
refuses "missing bundle" "nothere.ead.safetensors" "$EAD" info "$TMP/nothere.ead.safetensors"
# a wrong tensor shape: teacher.0.weight's first dimension changed in the JSON header
# (python3 is there wherever meson is)
python3 - "$TMP/s.ead.safetensors" "$TMP/shape.ead.safetensors" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
header["teacher.0.weight"]["shape"][0] = 127
text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
assert len(text) == n
open(sys.argv[2], "wb").write(data[:8] + text + data[8 + n:])
PY
refuses "bundle with a wrong tensor shape" "teacher.0.weight" "$EAD" info "$TMP/shape.ead.safetensors"
refuses "model new into a missing folder" "nofolder" "$EAD" model new --out "$TMP/nofolder/x.ead.safetensors"
refuses "model new with a bad size" "--model" "$EAD" model new --model x --out "$TMP/x.ead.safetensors"

# the project store: init, import with bad files, label, models, threshold with its
# audit trail, runs
for cmd in init import label images models threshold runs; do
  check "ead $cmd --help" "$EAD" $cmd --help
  check "ead $cmd --version" "$EAD" $cmd --version
done
P="$TMP/project"
check "init" "$EAD" init "$P"
[ -s "$P/project.ead" ] && ok "init writes project.ead" || not_ok "init writes project.ead"
refuses "init over an existing project" "exists already" "$EAD" init "$P"
mkdir -p "$TMP/batch/sub"
cp "$FIX/surface.png" "$TMP/batch/a.png"
cp "$FIX/surface.jpg" "$TMP/batch/sub/b.jpg"
cp "$TMP/truncated.png" "$TMP/empty.png" "$TMP/text.png" "$TMP/batch/"
"$EAD" import --project "$P" "$TMP/batch" >"$TMP/out" 2>"$TMP/err"
code=$?
if [ "$code" -eq 1 ] && grep -q "2 added" "$TMP/out" && grep -q "truncated.png: truncated PNG" "$TMP/out" \
  && grep -q "empty.png: empty file" "$TMP/out" && grep -q "text.png: not an image" "$TMP/out"; then
  ok "import adds the good files and lists the bad ones with reasons (exit 1)"
else
  not_ok "import adds the good files and lists the bad ones with reasons (exit $code)"
  sed 's/^/# /' "$TMP/out" "$TMP/err"
fi
"$EAD" import --project "$P" --json "$TMP/batch" >"$TMP/out" 2>"$TMP/err"
grep -q '"added" : 0' "$TMP/out" && grep -q '"present" : 2' "$TMP/out" && grep -q '"failed" : 3' "$TMP/out" \
  && ok "import again: nothing added, 2 present (--json)" \
  || { not_ok "import again: nothing added, 2 present (--json)"; sed 's/^/# /' "$TMP/out"; }
check "label by absolute path" "$EAD" label --project "$P" defect "$TMP/batch/a.png"
check "label by id" "$EAD" label --project "$P" good 2
check "label by a path relative to the current folder" \
  sh -c "cd '$TMP/batch' && '$EAD' label --project '$P' good sub/b.jpg"
refuses "label an unknown image" "nothing was labelled" "$EAD" label --project "$P" good "$TMP/nothere.png"
refuses "label with a bad word" "unknown label" "$EAD" label --project "$P" so-so 1
check "images with the project in the current folder" sh -c "cd '$P' && '$EAD' images"
grep -q "2 of 2 images" "$TMP/out" && ok "images lists both" || not_ok "images lists both"
check "images --label defect --json" "$EAD" images --project "$P" --label defect --json
grep -q '"total" : 1' "$TMP/out" && grep -q 'a.png' "$TMP/out" && ok "one defect, a.png" \
  || not_ok "one defect, a.png"
refuses "threshold without a model" "no model" "$EAD" threshold --project "$P" show
check "models --add" "$EAD" models --project "$P" --add "$TMP/s.ead.safetensors"
grep -q "efficientad-s" "$TMP/out" && ok "the model is listed" || not_ok "the model is listed"
check "threshold set with a reason" "$EAD" threshold --project "$P" set 0.75 --reason "line trial"
check "threshold show --json" "$EAD" threshold --project "$P" show --json
grep -q '"kind" : "set"' "$TMP/out" && grep -q '"new" : 0.75' "$TMP/out" \
  && grep -q '"reason" : "line trial"' "$TMP/out" && grep -q '"threshold" : 0.75' "$TMP/out" \
  && ok "show --json has the audit entry" \
  || { not_ok "show --json has the audit entry"; sed 's/^/# /' "$TMP/out"; }
check "threshold review band" "$EAD" threshold --project "$P" set --review 0.5 --reason "second look"
refuses "review band above the threshold" "review band" "$EAD" threshold --project "$P" set --review 0.9
check "threshold show" "$EAD" threshold --project "$P"
grep -q "line trial" "$TMP/out" && grep -q "second look" "$TMP/out" && ok "show lists the history" \
  || not_ok "show lists the history"
refuses "threshold suggest without scores" "nothing to suggest" "$EAD" threshold --project "$P" suggest
refuses "threshold set with a bad number" "expected a number" "$EAD" threshold --project "$P" set abc
check "runs" "$EAD" runs --project "$P"
grep -q "no runs yet" "$TMP/out" && ok "runs: none yet" || not_ok "runs: none yet"
check "runs --json" "$EAD" runs --project "$P" --json
echo "not a database, just text that goes on for a while" > "$TMP/junk.ead"
refuses "a file that is not a project" "not an EfficientAD project" "$EAD" runs --project "$TMP/junk.ead"
refuses "no project here" "ead init" "$EAD" images --project "$TMP/batch"

# teacher import: committed small checkpoints are refused properly; with PyTorch, a
# full-size random teacher is imported and `ead train --teacher` accepts the bundle
PTH=${EAD_TEST_FIXTURES}/pth
check "ead teacher --help" "$EAD" teacher --help
check "ead teacher import --help" "$EAD" teacher import --help
grep -q -- "--model" "$TMP/out" && grep -q "restricted unpickler" "$TMP/out" \
  && ok "teacher import --help names its options" || not_ok "teacher import --help names its options"
refuses "teacher import needs --out" "--out BUNDLE" "$EAD" teacher import "$PTH/small.pth" --model s
refuses "teacher import: a state_dict that is not a teacher" "not an EfficientAD PDN-small teacher" \
  "$EAD" teacher import "$PTH/small.pth" --model s --out "$TMP/teacher.ead.safetensors"
[ ! -e "$TMP/teacher.ead.safetensors" ] && ok "nothing written for a refused import" \
  || not_ok "nothing written for a refused import"
refuses "teacher import: a pickle calling os.system" "global 'os.system' is not allowed" \
  "$EAD" teacher import "$PTH/hostile-os-system.pth" --model s --out "$TMP/teacher.ead.safetensors"
refuses "teacher import: a whole pickled module" "save model.state_dict()" \
  "$EAD" teacher import "$PTH/module.pth" --model s --out "$TMP/teacher.ead.safetensors"
refuses "teacher import: the other size" "use --model m" \
  "$EAD" teacher import "$PTH/tiny-m-anomalib.pth" --model s --out "$TMP/teacher.ead.safetensors"
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  /usr/bin/python3 "$EAD_TEST_FIXTURES/make-pth-fixtures.py" teacher s nelson "$TMP/teacher_small.pth"
  check "teacher import of a PDN-S state_dict" "$EAD" teacher import "$TMP/teacher_small.pth" \
    --model s --out "$TMP/teacher.ead.safetensors" --json
  grep -q '"format" : "nelson"' "$TMP/out" && ok "teacher import --json names the format" \
    || { not_ok "teacher import --json names the format"; sed 's/^/# /' "$TMP/out"; }
  check "demo data for a teacher check" "$EAD" demo --scenes surface --train 12 --test-good 1 \
    --test-defect 1 "$TMP/teacher-data"
  check "ead train --teacher accepts the imported teacher" "$EAD" train --data "$TMP/teacher-data/surface" \
    --steps 1 --threads 2 --checkpoint-every 0 --teacher "$TMP/teacher.ead.safetensors" \
    --out "$TMP/trained.ead.safetensors"
  check "info on the trained model" "$EAD" info "$TMP/trained.ead.safetensors"
  grep -q "teacher_small.pth" "$TMP/out" && ok "the trained model names the imported teacher" \
    || not_ok "the trained model names the imported teacher"
else
  echo "# /usr/bin/python3 without torch: full-size teacher import skipped"
fi

# Precision: bad values are usage errors; where oneDNN may not use bf16 instructions
# (ONEDNN_MAX_CPU_ISA=AVX2 simulates such a CPU) auto falls back to fp32 and says so, and
# an explicit bf16 is refused rather than run slowly.
refuses "--precision with a bad value" "unknown precision 'fp16'" \
  "$EAD" bench --precision fp16 --runs 1 --warmup 0
check "info --describe lists the kernels" "$EAD" info --describe --threads 2 "$TMP/s.ead.safetensors"
grep -q "precision fp32" "$TMP/out" && grep -q "layer 3 conv 4x4 128->256 +relu: " "$TMP/out" \
  && ok "info --describe names precision and implementations" \
  || { not_ok "info --describe names precision and implementations"; sed 's/^/# /' "$TMP/out"; }
ONEDNN_MAX_CPU_ISA=AVX2 "$EAD" info --describe --precision auto --threads 2 \
  "$TMP/s.ead.safetensors" >"$TMP/out" 2>"$TMP/err"
grep -q "precision fp32 (auto: no bf16 kernels for ISA avx2)" "$TMP/out" \
  && ok "auto without bf16 instructions: fp32, and says why" \
  || { not_ok "auto without bf16 instructions: fp32, and says why"; sed 's/^/# /' "$TMP/out" "$TMP/err"; }
ONEDNN_MAX_CPU_ISA=AVX2 "$EAD" infer --precision auto --threads 2 --model "$TMP/s.ead.safetensors" \
  "$FIX/surface.png" >"$TMP/out" 2>"$TMP/err"
grep -q "ead infer: precision fp32 (auto: no bf16 kernels" "$TMP/err" \
  && ok "infer --precision auto reports the fallback on stderr" \
  || { not_ok "infer --precision auto reports the fallback on stderr"; sed 's/^/# /' "$TMP/err"; }
export ONEDNN_MAX_CPU_ISA=AVX2
refuses "explicit bf16 without bf16 instructions is refused" "bf16 needs a CPU with AVX512-BF16 or AMX" \
  "$EAD" infer --precision bf16 --threads 2 --model "$TMP/s.ead.safetensors" "$FIX/surface.png"
unset ONEDNN_MAX_CPU_ISA
if grep -q avx512_bf16 /proc/cpuinfo; then
  check "infer in bf16" "$EAD" infer --precision bf16 --threads 2 --json \
    --model "$TMP/s.ead.safetensors" "$FIX/surface.png"
  grep -q '"score"' "$TMP/out" && ok "bf16 scores an image" || not_ok "bf16 scores an image"
  check "bench --precision fp32,bf16" "$EAD" bench --precision fp32,bf16 --json --threads 2 \
    --warmup 0 --runs 1
  grep -q '"precision" : "bf16"\|"precision":"bf16"' "$TMP/out" \
    && ok "bench reports the bf16 row" || { not_ok "bench reports the bf16 row"; sed 's/^/# /' "$TMP/out"; }
else
  echo "# this CPU has no AVX512-BF16: the bf16 runs are skipped"
fi

tap_end
