#!/usr/bin/env bash
# Reproduces the routing results in BENCHMARKS.md from scratch:
#   bash scripts/bench/reproduce.sh          # everything (about 22 minutes on 2 cores)
#   bash scripts/bench/reproduce.sh sim      # 8 simulated replicas, every scenario, every routing
#   bash scripts/bench/reproduce.sh tools    # the same clusters driven by inference-perf and aiperf
#   bash scripts/bench/reproduce.sh up       # inference-perf against a running `llmd up`
#   bash scripts/bench/reproduce.sh cpu      # 2 real CPU replicas of the built-in model
#   bash scripts/bench/reproduce.sh sweep    # rate sweep per scenario: round robin vs prefix, precise-prefix
#   bash scripts/bench/reproduce.sh pressure # cache-pressure sweep (0.25x-4x one replica's KV cache)
#   bash scripts/bench/reproduce.sh sensitivity  # the pressure sweep under other simulator costs
# Each part writes bench-results/PART/{results.md,NAME.json,NAME.md,NAME.svg}; the
# combined table is bench-results/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
part=${1:-all}
cargo build --release --quiet
llmd=target/release/llmd

# Installs inference-perf and aiperf (once) and exports their paths for `llmd bench`.
load_tools() {
    local env_lines
    env_lines=$(bash scripts/loadgen/setup.sh)
    while IFS= read -r line; do export "${line?}"; done <<< "$env_lines"
}

run_sim() {
    $llmd bench all --sim --replicas 8 --out bench-results/sim
}
run_tools() {
    load_tools
    $llmd bench shared-prefix,code-completion --sim --replicas 8 --routing round-robin,precise-prefix \
        --driver inference-perf,aiperf --out bench-results/tools
}
# A fresh `llmd up` per run (so no run inherits another's cache), driven over its URL.
run_up() {
    load_tools
    mkdir -p bench-results/up
    local port=18000 routing driver pid
    for routing in round-robin precise-prefix; do
        for driver in builtin inference-perf aiperf; do
            $llmd up --sim --replicas 8 --routing "$routing" --port $port > "bench-results/up/$routing-$driver.log" 2>&1 &
            pid=$!
            for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null && break; sleep 0.2; done
            $llmd bench shared-prefix --url "http://127.0.0.1:$port" --label "$routing" --driver "$driver" \
                --out "bench-results/up/$routing-$driver"
            kill -INT $pid
            wait $pid || true
        done
    done
    first=1
    for routing in round-robin precise-prefix; do
        for driver in builtin inference-perf aiperf; do
            f=bench-results/up/$routing-$driver/results.md
            if [ $first = 1 ]; then grep -m2 '^|' "$f"; first=0; fi
            grep '^|' "$f" | tail -n +3
        done
    done > bench-results/up/results.md
}
run_cpu() {
    $llmd bench cpu-shared-prefix --replicas 2 --out bench-results/cpu
}
# Each scenario at rates up to past round robin's saturation under the default simulator
# (Llama-3.1-8B on one H100, see LatencyModel), steady state after each warm-up.
run_sweep() {
    local routings=round-robin,prefix,precise-prefix
    $llmd bench shared-prefix,random --sim --replicas 8 --routing $routings --rate 25,50,100,150 --out bench-results/sweep/a
    $llmd bench mixed --sim --replicas 8 --routing $routings --rate 16,32,64 --out bench-results/sweep/b
    $llmd bench multi-turn --sim --replicas 8 --routing $routings --rate 12,24,48 --out bench-results/sweep/c
    $llmd bench code-completion --sim --replicas 8 --routing $routings --rate 4,8,16,32 --out bench-results/sweep/d
    rows bench-results/sweep/{a,b,c,d}/results.md > bench-results/sweep/results.md
}
run_pressure() {
    $llmd bench cache-pressure --sim --replicas 8 --routing round-robin,prefix,precise-prefix --out bench-results/pressure
}
# Prefill five times dearer (a larger model, or an older accelerator): the old default.
run_sensitivity() {
    $llmd bench cache-pressure --sim --replicas 8 --routing round-robin,prefix,precise-prefix --rate 20 \
        --sim-latency step=8ms,prefill=160us,decode=120us,context=60ns --out bench-results/sensitivity
}
# The table rows of several results.md files under one header.
rows() {
    grep -h -m2 '^|' "$1"
    for f in "$@"; do grep '^|' "$f" | tail -n +3; done
}

case $part in
    sim) run_sim ;;
    tools) run_tools ;;
    up) run_up ;;
    cpu) run_cpu ;;
    sweep) run_sweep ;;
    pressure) run_pressure ;;
    sensitivity) run_sensitivity ;;
    all) run_sim; run_tools; run_up; run_cpu; run_sweep; run_pressure; run_sensitivity ;;
    *) echo "usage: $0 [all|sim|tools|up|cpu|sweep|pressure|sensitivity]" >&2; exit 2 ;;
esac
# One table: the header once, then every part's rows.
mapfile -t parts < <(ls bench-results/{sim,tools,up,cpu,sweep,pressure,sensitivity}/results.md 2> /dev/null)
[ ${#parts[@]} -gt 0 ] && rows "${parts[@]}" > bench-results/RESULTS.md
echo "wrote bench-results/RESULTS.md"
