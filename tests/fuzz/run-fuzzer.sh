#!/bin/sh
# run-fuzzer.sh FUZZER SECONDS WORKDIR DICTIONARY SEEDDIR...: runs a libFuzzer target for
# a bounded time with a fixed seed, from the seeds, with a fresh WORKDIR holding the corpus
# it grows and any input that made it fail (crash-*, leak-*, timeout-*, oom-*).  Exits
# non-zero when the target crashes, leaks, takes over 30 s on one input or uses more than
# 2 GiB.  (libFuzzer's own exit status for a finding is 77, which meson would count as a
# skipped test, so the statuses are set here.)
set -eu

fuzzer=$1
seconds=$2
work=$3
dictionary=$4
shift 4

rm -rf "$work"
mkdir -p "$work/corpus"
# tools/test turns leak detection off for the other tests; a fuzzer wants it
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
exec "$fuzzer" -max_total_time="$seconds" -seed=1 -rss_limit_mb=2048 -timeout=30 \
     -error_exitcode=1 -timeout_exitcode=1 \
     -dict="$dictionary" -artifact_prefix="$work/" -print_final_stats=1 \
     "$work/corpus" "$@"
