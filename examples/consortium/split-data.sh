#!/usr/bin/env bash
# Split the shipped WDBC file into three hospitals' files (row i → hospital i mod 3).
set -euo pipefail
cd "$(dirname "$0")"
src=../data/wdbc.csv
for k in 0 1 2; do
    name=$(printf "hospital-%s" "$(echo a b c | cut -d' ' -f$((k + 1)))")
    awk -v k="$k" 'NR == 1 || (NR - 2) % 3 == k' "$src" > "data/$name.csv"
done
