#!/bin/sh
# Projects on the command line.  (a) Crash safety: `ead infer` killed with SIGKILL in
# the middle of a 1000-image run leaves an intact database (PRAGMA integrity_check) with
# every committed batch, and a rerun scores exactly the rest; `ead report` killed while
# writing leaves no partial file under the report's name.  (b) End to end: ead demo,
# init, import, train, infer, threshold suggest, report --pdf --csv, and the PDF
# rendered to PNG with pdftoppm and checked not to be blank.
# EAD_TEST_CRASH_IMAGES changes the size of the crash run (default 1000).
# Output: TAP.
set -u
. "$(dirname "$0")/cli-lib.sh"
EAD=$1
N=${EAD_TEST_CRASH_IMAGES:-1000}

# json_int FILE KEY: the first integer member KEY of the pretty JSON in FILE
json_int() { grep -o "\"$2\" : [0-9]*" "$1" | head -n 1 | tr -dc '0-9'; }
# done_now PROJECT: images the newest run has scored or failed (`ead runs --json`)
done_now() {
  "$EAD" runs --project "$1" --json >"$TMP/runs.json" 2>/dev/null || return 0
  json_int "$TMP/runs.json" done
}
# scores PROJECT: results the latest model has (`ead threshold show --json`)
scores() {
  "$EAD" threshold --project "$1" show --json >"$TMP/threshold.json" 2>/dev/null || return 0
  json_int "$TMP/threshold.json" scores
}
# integrity PROJECT: SQLite's own check of the project file
integrity() {
  if command -v sqlite3 >/dev/null 2>&1; then
    sqlite3 "$1/project.ead" "PRAGMA integrity_check" 2>&1
  else
    echo "sqlite3 missing"
  fi
}
# complete_pdf FILE: a whole PDF, from the header to the end-of-file marker
complete_pdf() { head -c 5 "$1" | grep -q '%PDF-' && tail -c 32 "$1" | grep -q '%%EOF'; }
# ink PNG: the share of pixels that are not near white (python3 is there wherever meson
# is; only its standard library is used)
ink() {
  python3 - "$1" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n"
pos, idat = 8, b""
while pos < len(data):
    size, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + size]
    pos += 12 + size
    if kind == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT":
        idat += body
assert depth == 8
bpp = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
raw, stride = zlib.decompress(idat), width * bpp
prev, dark = bytearray(stride), 0
for y in range(height):
    start = y * (stride + 1)
    kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + a) & 255
        elif kind == 2:
            line[i] = (line[i] + b) & 255
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 255
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    dark += sum(1 for x in range(0, stride, bpp) if min(line[x:x + min(bpp, 3)]) < 200)
    prev = line
print("%.4f" % (dark / (width * height)))
PY
}

for cmd in infer report; do
  check "ead $cmd --help" "$EAD" $cmd --help
  grep -q -- "--project" "$TMP/out" && ok "ead $cmd --help names --project" \
    || not_ok "ead $cmd --help names --project"
done
refuses "report needs --pdf or --csv" "--pdf FILE" "$EAD" report --project "$TMP"
refuses "--split without --project" "go with --project" "$EAD" infer --model x --split test img.png

# (a) crash safety
P=$TMP/crash
M=$TMP/random.ead.safetensors
check "$N demo images" "$EAD" demo --scenes surface --train "$N" --test-good 0 --test-defect 0 \
  --size 64 "$TMP/many"
check "init" "$EAD" init "$P"
check "import $N images" "$EAD" import --project "$P" --json "$TMP/many"
[ "$(json_int "$TMP/out" added)" = "$N" ] && ok "$N images imported" \
  || { not_ok "$N images imported"; show "$TMP/out"; }
check "a random model" "$EAD" model new --seed 5 --out "$M"
refuses "infer --project with image arguments" "give no IMAGE" \
  "$EAD" infer --project "$P" --model "$M" "$TMP/many/surface/train/good/000.png"

started=$(date +%s)
"$EAD" infer --project "$P" --model "$M" --batch 16 --threads 2 >"$TMP/kill.out" 2>"$TMP/kill.err" &
pid=$!
before=0
tries=0
# Until a few batches are committed (at most 5 minutes).
while [ "$tries" -lt 1500 ] && kill -0 "$pid" 2>/dev/null; do
  before=$(done_now "$P")
  [ -n "$before" ] && [ "$before" -ge 48 ] && break
  sleep 0.2
  tries=$((tries + 1))
done
kill -9 "$pid" 2>/dev/null
wait "$pid"
code=$?
pid=
if [ "$code" -eq 137 ] && [ -n "$before" ] && [ "$before" -ge 48 ] && [ "$before" -lt "$N" ]; then
  ok "ead infer killed with SIGKILL after $before images were committed"
else
  not_ok "ead infer killed with SIGKILL mid-run (exit $code, $before committed)"
  show "$TMP/kill.err"
fi
result=$(integrity "$P")
[ "$result" = ok ] && ok "PRAGMA integrity_check after the kill: ok" \
  || not_ok "PRAGMA integrity_check after the kill: $result"
after=$(scores "$P")
[ -n "$after" ] && [ "$after" -ge "$before" ] && [ "$after" -lt "$N" ] \
  && ok "every committed batch is there ($after results, $before seen before the kill)" \
  || not_ok "every committed batch is there ($after results, $before seen before the kill)"
if [ $((after % 16)) -eq 0 ]; then ok "whole batches only ($after = $((after / 16)) x 16)"
else not_ok "whole batches only ($after results)"; fi

check "the rerun" "$EAD" infer --project "$P" --model "$M" --batch 16 --threads 2 --json
cp "$TMP/out" "$TMP/rerun.json"
scored=$(json_int "$TMP/rerun.json" scored)
skipped=$(json_int "$TMP/rerun.json" skipped)
if [ "$scored" = $((N - after)) ] && [ "$skipped" = "$after" ]; then
  ok "the rerun scores exactly the remaining $scored images and skips $skipped"
else
  not_ok "the rerun scores exactly the remaining $((N - after)) images (scored $scored, skipped $skipped)"
  show "$TMP/rerun.json"
fi
[ "$(scores "$P")" = "$N" ] && ok "$N results in the end" || not_ok "$N results in the end"
echo "# $N images scored in $(($(date +%s) - started)) s, kill and rerun included"
check "runs after the rerun" "$EAD" runs --project "$P"
grep -q "failed .*interrupted" "$TMP/out" && grep -q "done" "$TMP/out" \
  && ok "the killed run is marked interrupted, the rerun done" \
  || { not_ok "the killed run is marked interrupted, the rerun done"; show "$TMP/out"; }
check "nothing left to score" "$EAD" infer --project "$P" --model "$M" --json
[ "$(json_int "$TMP/out" scored)" = 0 ] && ok "a third run scores nothing" \
  || not_ok "a third run scores nothing"

# The report, killed while the PDF is written: threshold 0 flags every image.
check "threshold 0" "$EAD" threshold --project "$P" set 0 --reason "flag everything"
R=$TMP/reports
mkdir "$R"
"$EAD" report --project "$P" --pdf "$R/r.pdf" --csv "$R/r.csv" >"$TMP/report.out" 2>"$TMP/report.err" &
pid=$!
tries=0
while [ "$tries" -lt 600 ] && kill -0 "$pid" 2>/dev/null; do
  ls "$R" | grep -q 'r\.pdf\.tmp-' && break
  sleep 0.05
  tries=$((tries + 1))
done
kill -9 "$pid" 2>/dev/null
wait "$pid"
code=$?
pid=
if [ ! -e "$R/r.pdf" ] || complete_pdf "$R/r.pdf"; then
  ok "report killed (exit $code): no partial PDF under its name"
else
  not_ok "report killed (exit $code): a partial PDF under its name"
fi
if [ ! -e "$R/r.csv" ] || [ "$(wc -l <"$R/r.csv")" -eq $((N + 1)) ]; then
  ok "report killed: no partial CSV under its name"
else
  not_ok "report killed: a partial CSV under its name"
fi
result=$(integrity "$P")
[ "$result" = ok ] && ok "PRAGMA integrity_check after the killed report: ok" \
  || not_ok "PRAGMA integrity_check after the killed report: $result"
check "the report again" "$EAD" report --project "$P" --pdf "$R/r.pdf" --csv "$R/r.csv" --json
complete_pdf "$R/r.pdf" && [ "$(wc -l <"$R/r.csv")" -eq $((N + 1)) ] \
  && [ "$(json_int "$TMP/out" flagged)" = "$N" ] \
  && ok "a complete PDF and CSV, $N images flagged" \
  || { not_ok "a complete PDF and CSV, $N images flagged"; show "$TMP/out"; }

# (b) end to end
D=$TMP/demo
E=$TMP/e2e
T=$TMP/trained.ead.safetensors
check "ead demo" "$EAD" demo --scenes surface --train 30 --test-good 5 --test-defect 3 "$D"
check "ead init" "$EAD" init "$E"
check "ead import" "$EAD" import --project "$E" "$D/surface"
check "ead train" "$EAD" train --data "$D/surface" --steps 30 --threads 2 --checkpoint-every 0 \
  --out "$T"
check "ead infer --project" "$EAD" infer --project "$E" --model "$T" --threads 2 --json
total=$(json_int "$TMP/out" total)
[ "$(json_int "$TMP/out" scored)" = "$total" ] && [ "$total" -gt 40 ] \
  && ok "every image scored ($total)" || { not_ok "every image scored"; show "$TMP/out"; }
check "ead threshold suggest" "$EAD" threshold --project "$E" suggest
grep -q "suggested" "$TMP/out" && ok "a threshold is suggested" || not_ok "a threshold is suggested"
check "ead report --pdf --csv" "$EAD" report --project "$E" --pdf "$TMP/e2e.pdf" \
  --csv "$TMP/e2e.csv" --json
[ "$(wc -l <"$TMP/e2e.csv")" -eq $((total + 1)) ] && head -n 1 "$TMP/e2e.csv" \
  | grep -q '^path,label,split,score,verdict,model,threshold' \
  && ok "the CSV has a header and a row per image" || not_ok "the CSV has a header and a row per image"
grep -q ',test,[0-9.e-]*,\(pass\|review\|fail\),' "$TMP/e2e.csv" \
  && ok "test images have a verdict" || not_ok "test images have a verdict"
if command -v pdftoppm >/dev/null 2>&1; then
  check "pdftoppm renders the PDF" pdftoppm -png -r 40 "$TMP/e2e.pdf" "$TMP/page"
  first=$(ls "$TMP"/page-*.png 2>/dev/null | head -n 1)
  share=$( [ -n "$first" ] && ink "$first")
  if [ -n "$first" ] && [ -s "$first" ] && python3 -c "import sys; sys.exit(not float('$share') > 0.01)"; then
    ok "the first page is not blank ($share of its pixels are ink)"
  else
    not_ok "the first page is not blank ($share)"
  fi
  pages=$(ls "$TMP"/page-*.png | wc -l)
  [ "$pages" -ge 2 ] && ok "$pages pages: the summary and the flagged images" \
    || not_ok "$pages pages: the summary and the flagged images"
else
  echo "# pdftoppm is not installed (poppler-utils): the PDF was not rendered"
fi

tap_end
