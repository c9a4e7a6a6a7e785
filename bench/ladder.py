"""Each speed change of the engine, before and after, in one run: the engine at the commit before
the first change and at each commit that landed one, side by side with the floor.

    python -m bench.ladder [--rounds 2] [--apis open,web]

Same set-up as ``bench/speed.py`` (N images, T per job, C at once, R requests/s; the simulator in
its own process, a fresh one per run); each commit is checked out in a temporary git worktree and
the rounds alternate the commits, so drift in the machine's load spreads over all of them.
Results: bench/results/ladder.json (median of the rounds per commit and API, and each run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import make_images
from bench.speed import ENV, RESULTS, ROOT, Sim, engine, floor, worktree

# (commit, what it changed), oldest first; "HEAD" is this checkout as committed.
LADDER = [
    ("f89e956", "baseline: before the changes"),
    ("acf738a", "rate gate: late answers from an older window ignored; one probe after a 429"),
    ("74bee0f", "slot only while the job exists, FIFO limiter, no /result call, no re-check in submit, "
                "manifest serialised off the loop"),
    ("1af394f", "first look at the 90th percentile of observed lengths, re-look by reported progress"),
    ("27fba1e", "manifest journal from 2000 items; first look at the 95th percentile of bracketed lengths"),
    ("6f477e0", "engine import without rich/click; plain-row credit report"),
    ("d8dca8a", "first look by stochastic approximation of a rate-aware share of hits; one polling loop"),
    ("7347dd7", "the first look's step shared by the jobs in flight; rate pressure against the gate's "
                "own pace; local sources opened without a thread hop, small results stored in one"),
    ("097b5f5", "the first look learned from where the first missed jobs ended; inputs checked in one "
                "thread hop per 256; a rate used at 0.9 of the gate's pace counts as binding"),
    ("a4ce89d", "a wave of missed first looks raises the point once, not once per miss"),
    ("d91a37a", "the first look reads the point when it is due; 99.9 % hits when the rate binds; just "
                "after a reset the rate pressure reads the window that ended"),
    ("HEAD", "the manifest a journal of changed items from 256 items (was 2000)"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--apis", default="open,web")
    args = parser.parse_args()
    n, t, c, r, tick = int(ENV["N"]), ENV["T"], int(ENV["C"]), int(ENV["R"]), ENV["TICK"]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_images(src, n)
        trees = {ref: worktree(ref, Path(tmp) / f"tree-{i}") for i, (ref, _) in enumerate(LADDER)}
        try:
            for round_ in range(args.rounds):
                for api in args.apis.split(","):
                    with Sim(t, c, r, tick) as sim:
                        runs.setdefault(api, {}).setdefault("floor", []).append(
                            asyncio.run(floor(api, sim, src, n, t, c, r))
                        )
                    for ref, _ in LADDER:
                        with Sim(t, c, r, tick) as sim:
                            row = engine(
                                api, sim, src, Path(tmp) / f"out-{round_}-{api}-{ref}", c, trees[ref]
                            )
                        runs[api].setdefault(ref, []).append(row)
                        print(round_, api, ref, row["makespan_s"], row["http_requests_per_job"], flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                )
    out: dict[str, Any] = {
        "params": {"N": n, "T_s": t, "C": c, "R_per_s": r, "sim_tick_s": tick, "rounds": args.rounds},
        "ladder": [{"ref": ref, "change": what} for ref, what in LADDER],
    }
    for api, by_ref in runs.items():
        bound = max(n * t / c, 2 * n / r) if api == "open" else n * t / c
        fl = statistics.median(x["makespan_s"] for x in by_ref["floor"])
        rows = []
        previous = None
        for ref, what in LADDER:
            span = statistics.median(x["makespan_s"] for x in by_ref[ref])
            row = {
                "ref": ref,
                "change": what,
                "makespan_s": round(span, 2),
                "vs_bound": round(span / bound, 2),
                "vs_floor": round(span / fl, 2),
                "vs_previous": None if previous is None else round(span / previous, 2),
                "http_requests_per_job": statistics.median(x["http_requests_per_job"] for x in by_ref[ref]),
                "client_cpu_ms_per_job": statistics.median(x["client_cpu_ms_per_job"] for x in by_ref[ref]),
                "runs_s": [x["makespan_s"] for x in by_ref[ref]],
            }
            rows.append(row)
            previous = span
        out[api] = {"bound_s": round(bound, 2), "floor_s": round(fl, 2), "rows": rows}
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ladder.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({api: out[api] for api in runs}, indent=1))


if __name__ == "__main__":
    main()
