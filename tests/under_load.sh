#!/usr/bin/env bash
# Run a command while every core is kept busy, the way a noisy CI machine is: `tests/under_load.sh CMD...`.
# The load is stress-ng (installed with apt-get when missing and possible), else one Python spinner per core.
set -uo pipefail

if ! command -v stress-ng >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "under_load: installing stress-ng" >&2
    { apt-get update -qq && apt-get install -y -qq stress-ng; } >/dev/null 2>&1 || echo "under_load: apt-get failed" >&2
fi

load_pids=()
if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu 0 --timeout 4h --quiet &
    load_pids+=($!)
    echo "under_load: stress-ng --cpu 0 on $(nproc) cores" >&2
else
    for _ in $(seq "$(nproc)"); do
        python3 -c 'while True: pass' &
        load_pids+=($!)
    done
    echo "under_load: no stress-ng; $(nproc) Python spinners instead" >&2
fi
stop_load() { kill "${load_pids[@]}" 2>/dev/null; wait "${load_pids[@]}" 2>/dev/null; }
trap stop_load EXIT INT TERM

"$@"
