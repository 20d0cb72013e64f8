# cli-lib.sh: what the command-line test scripts share (sourced, POSIX sh).  Sets TMP, a
# scratch folder removed on exit (and kills the background run whose pid is in $pid), and
# gives TAP helpers: ok/not_ok, check (a command succeeds), refuses (it fails properly),
# and helpers for checkpoints of background runs.  The script ends with `tap_end`.
TMP=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; chmod -R u+w "$TMP"; rm -rf "$TMP"' EXIT

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
show() { sed 's/^/# /' "$1"; }
# glib_clean FILE: no GLib critical or warning (an internal error, not a message for users)
glib_clean() { ! grep -q -e "-CRITICAL" -e "-WARNING" -e "GLib" "$1"; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
  desc=$1; shift
  if "$@" >"$TMP/out" 2>"$TMP/err" && glib_clean "$TMP/err"; then ok "$desc"; else not_ok "$desc"; show "$TMP/err"; fi
}
# refuses DESCRIPTION NEEDLE COMMAND...: the command must exit 1 or 2 (not crash) and
# print NEEDLE (the file name and the problem) on stderr
refuses() {
  desc=$1; needle=$2; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"
  code=$?
  if [ "$code" -ge 1 ] && [ "$code" -le 2 ] && grep -q -- "$needle" "$TMP/err" && glib_clean "$TMP/err"; then
    ok "$desc"
  else
    not_ok "$desc (exit $code)"
    show "$TMP/err"
  fi
}
# checkpoint_step FILE: the step a checkpoint holds, from its safetensors header ("" when
# there is none)
checkpoint_step() {
  [ -f "$1" ] || return 0
  head -c 65536 "$1" | tr -d ' \n' | grep -ao '"ead.checkpoint.step":"[0-9]*"' | tr -dc '0-9'
}
# wait_step FILE MIN: waits (up to 3 minutes) while the run $pid lives until checkpoint
# FILE holds a step >= MIN
wait_step() {
  tries=0
  while [ "$tries" -lt 900 ]; do
    step=$(checkpoint_step "$1")
    if [ -n "$step" ] && [ "$step" -ge "$2" ]; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
    tries=$((tries + 1))
  done
  return 1
}
# tap_end: the plan line; the script's exit status says whether every test passed
tap_end() {
  echo "1..$n"
  [ "$failed" -eq 0 ]
}
