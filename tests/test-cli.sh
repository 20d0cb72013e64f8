#!/bin/sh
# End-to-end checks of the `ead` command line: help and version everywhere, a model
# bundle made and described, images scored with heatmaps written, and every kind of bad
# input refused with a message that names the file, a non-zero exit code and no crash.
# Output: TAP.
set -u
EAD=$1
FIX=${EAD_TEST_FIXTURES:?}/cli
TMP=$(mktemp -d)
trap 'chmod -R u+w "$TMP"; rm -rf "$TMP"' EXIT

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
  desc=$1; shift
  if "$@" >"$TMP/out" 2>"$TMP/err"; then ok "$desc"; else not_ok "$desc"; sed 's/^/# /' "$TMP/err"; fi
}
# refuses DESCRIPTION NEEDLE COMMAND...: the command must exit 1 or 2 (not crash) and
# print NEEDLE (the file name and the problem) on stderr
refuses() {
  desc=$1; needle=$2; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"
  code=$?
  if [ "$code" -ge 1 ] && [ "$code" -le 2 ] && grep -q -- "$needle" "$TMP/err"; then
    ok "$desc"
  else
    not_ok "$desc (exit $code)"
    sed 's/^/# /' "$TMP/err"
  fi
}

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

echo "1..$n"
[ "$failed" -eq 0 ]
