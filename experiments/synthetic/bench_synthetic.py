"""Every mode of a WAM trained on the synthetic dot world, beside its trivial baseline, by training budget.

    python experiments/synthetic/bench_synthetic.py --steps 2000,5000 --out experiments/synthetic/synthetic.json

For each step count, trains from scratch (seed 0) and prints the held-out errors of `wam.synthetic.
evaluate_synthetic` with the training time, as JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from wam.synthetic import SyntheticSetup, evaluate_synthetic, train_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="2000,5000", help="comma-separated training budgets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        run = train_synthetic(SyntheticSetup(steps=steps))
        for use_ema in (False, True):
            row = {"steps": steps, "weights": "ema" if use_ema else "raw", **evaluate_synthetic(run, use_ema=use_ema)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
