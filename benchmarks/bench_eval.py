"""Closed-loop evaluation cost on a benchmark protocol: rendering only the observations the policy looks at
against rendering every step, on the same episodes (which must come out the same).

    python benchmarks/bench_eval.py --checkpoint checkpoints/wam-tiny-mt50 --protocol lerobot \\
        --tasks reach,drawer-open,button-press-topdown --episodes 2 --out benchmarks/eval.json

A policy executing n_action_steps actions per chunk looks at one observation in n_action_steps (n_obs_steps of
them, with history frames); `wam.rollout` leaves the images of the others unrendered (`needs_images`,
`render_images`). On `lerobot`, where each frame is rendered at 480 px with MetaWorld's shadows, rendering is
most of an evaluation's time. The passes run in the order lazy, every step, lazy (the two lazy times bracket any
drift of the machine's load); one process, `--threads` torch threads, environments stepped in that process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class EveryFrame:
    """A policy as given, except that it does not say which observations it looks at: every step is rendered."""

    def __init__(self, policy):
        self._policy = policy

    def __getattr__(self, name):
        if name == "needs_images":
            raise AttributeError(name)
        return getattr(self._policy, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/wam-tiny-mt50")
    ap.add_argument("--tasks", default="reach,drawer-open,button-press-topdown")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per task")
    ap.add_argument("--protocol", default="lerobot")
    ap.add_argument("--seed", default="dev", help="evaluation seed or seed set")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON result file")
    args = ap.parse_args()

    import tempfile

    import torch

    from wam.evaluate import evaluate
    from wam.policy import WAMPolicy

    torch.set_num_threads(args.threads)
    policy = WAMPolicy.from_checkpoint(args.checkpoint)
    kw = dict(
        env="metaworld",
        tasks=args.tasks,
        episodes=args.episodes,
        videos_per_task=0,
        expert=False,
        progress=False,
        seed=args.seed,
        protocol=args.protocol,
        max_steps=args.max_steps,
    )
    passes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, p in (("lazy", policy), ("every_step", EveryFrame(policy)), ("lazy_again", policy)):
            t = time.perf_counter()
            info = evaluate(p, out=Path(tmp) / name, **kw)
            rows = [{k: r[k] for k in ("task", "successes", "steps", "sum_rewards")} for r in info["per_task"]]
            passes[name] = {"seconds": round(time.perf_counter() - t, 1), "rows": rows}
            print(f"{name}: {passes[name]['seconds']} s", flush=True)
    steps = sum(sum(r["steps"]) for r in passes["lazy"]["rows"])
    lazy = min(passes["lazy"]["seconds"], passes["lazy_again"]["seconds"])
    result = {
        "settings": {**vars(args), "n_action_steps": policy.n_action_steps, "n_obs_steps": policy.cfg.n_obs_steps},
        "env_steps": steps,
        "same_episodes": passes["lazy"]["rows"] == passes["every_step"]["rows"] == passes["lazy_again"]["rows"],
        "seconds": {k: v["seconds"] for k, v in passes.items()},
        "speedup": round(passes["every_step"]["seconds"] / lazy, 2),
        "episodes": passes["lazy"]["rows"],
    }
    print(json.dumps({k: result[k] for k in ("env_steps", "same_episodes", "seconds", "speedup")}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["same_episodes"] else 1)


if __name__ == "__main__":
    main()
