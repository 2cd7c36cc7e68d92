"""Steady-state TTFT p50/p99 of repeated `llmd bench` runs, and each routing's ratio to
round robin next to round robin's own run-to-run ratio (the noise band).

usage: python3 scripts/bench/spread.py DIR...   (each DIR holds one run's JSON files)
"""
import glob
import json
import sys
from collections import defaultdict


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# (scenario, rate) -> routing -> [(p50, p99)] over the runs
runs = defaultdict(lambda: defaultdict(list))
for d in sys.argv[1:]:
    for f in sorted(glob.glob(f"{d}/*.json")):
        doc = json.load(open(f))
        if "results" not in doc:
            continue
        for r in doc["results"]:
            for run in r["runs"]:
                samples = sorted(run["samples"], key=lambda s: s["sent_at"])[run["warmup_requests"]:]
                ttft = [s["ttft"] * 1e3 for s in samples if s["ok"]]
                runs[(doc["scenario"], run["rate"])][r["routing"]].append((pct(ttft, 0.5), pct(ttft, 0.99)))

print("| scenario | rate (req/s) | routing | runs | steady TTFT p50 (ms) | p99 (ms) | RR ÷ this p50 | RR ÷ this p99 |")
print("|---|---|---|---|---|---|---|---|")
for (scenario, rate), by in sorted(runs.items()):
    rr = by.get("round-robin", [])
    for routing, xs in by.items():
        p50 = ", ".join(f"{a:.1f}" for a, _ in xs)
        p99 = ", ".join(f"{b:.1f}" for _, b in xs)
        if rr:
            # Every pairing of a round-robin run with a run of this routing: for round
            # robin itself, its runs against each other (the spread a tie shows).
            pairs = [(a, b) for i, a in enumerate(rr) for j, b in enumerate(xs) if routing != "round-robin" or i != j]
            r50 = [a[0] / b[0] for a, b in pairs] or [1.0]
            r99 = [a[1] / b[1] for a, b in pairs] or [1.0]
            ratio = f"{min(r50):.2f}–{max(r50):.2f}× | {min(r99):.2f}–{max(r99):.2f}×"
        else:
            ratio = "– | –"
        print(f"| {scenario} | {rate:g} | {routing} | {len(xs)} | {p50} | {p99} | {ratio} |")
