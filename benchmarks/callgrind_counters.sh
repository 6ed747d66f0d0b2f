#!/bin/sh
# What the counters cost (README, "Operations"): instructions per put + get
# of benchmarks/callgrind_loop.c, (N=20000 - N=0) / 20000 so that start-up
# cancels, built as setup.py builds the core, with the counters and without
# them (-DFQ_NO_COUNTERS: no statistics add, no time-in-queue test).
# Usage: benchmarks/callgrind_counters.sh [extra cflags]   (needs valgrind)
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
per() { # $1: build dir; prints instructions per put + get
    for n in 0 20000; do
        valgrind --tool=callgrind --callgrind-out-file="$1/cg.$n" "$1/loop" $n 2>&1 |
            sed -n 's/.*Collected : \([0-9]*\).*/\1/p' > "$1/ir.$n"
    done
    echo "$(cat "$1/ir.0") $(cat "$1/ir.20000")" | awk '{printf "%.2f", ($2 - $1) / 20000}'
}
for v in with without; do
    b="$tmp/$v"; mkdir "$b"
    flags=""; [ $v = without ] && flags=-DFQ_NO_COUNTERS
    for f in fq_proc fq_file fq_segment fq_wait fq_topic fq_members fq_sub fq_put fq_get \
             fq_state fq_recover fq_inspect; do
        gcc -std=gnu11 -O2 -mcx16 -fvisibility=hidden -I"$top/csrc" $flags "$@" \
            -c "$top/csrc/$f.c" -o "$b/$f.o"
    done
    gcc -std=gnu11 -O2 -I"$top/csrc" "$top/benchmarks/callgrind_loop.c" "$b"/*.o -o "$b/loop" -lpthread
    eval "$v=\$(per \$b)"
done
echo "instructions per put+get: with counters $with, without $without" \
     "($(echo "$with $without" | awk '{printf "%+.2f%%", 100 * ($1 - $2) / $2}'))"
