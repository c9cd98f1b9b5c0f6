"""How much the world model's frames follow its actions, with and without guidance on the actions.

A world model trained on demonstrations learns mostly what the expert does next, whatever actions it is given
("Policy evaluation in imagination" in the README). Forward mode with action guidance W
(`wam.modes.sample(..., action_guidance=W)`) predicts video(no actions) + W x (forward - video), pushing the
frames away from the data's prior towards what the actions say. For each W this measures, on the run's held-out
episodes (`wam.evaluate.evaluate_world_model`, the same windows and noise for every W):

    forward        PSNR of the predicted frames given each window's own actions (higher: more accurate)
    other_actions  PSNR given another window's actions
    gap            forward - other_actions: how much the frames depend on the actions (higher: more)

Runbook (about 75 seconds per W at 1 thread for 256 windows):
    python experiments/imagination/bench_action_guidance.py --checkpoint runs/wm-sharp/wam-failures/checkpoint \\
        --dataset data/mt50 --guidance 1,2,3,5 --out experiments/imagination/action_guidance.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="the world model (a checkpoint directory)")
    ap.add_argument("--dataset", required=True, help="the dataset it was trained on (its held-out episodes are used)")
    ap.add_argument("--guidance", default="1,2,3,5", help="comma-separated action guidance values W")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per prediction")
    ap.add_argument("--out", default="experiments/imagination/action_guidance.json")
    args = ap.parse_args(argv)

    from wam.atomic import write_json_atomic
    from wam.checkpoint import load_checkpoint
    from wam.evaluate import evaluate_world_model

    ckpt = load_checkpoint(args.checkpoint)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else {}
    rows = record.setdefault(args.checkpoint, {})
    out.parent.mkdir(parents=True, exist_ok=True)
    for w in [float(x) for x in args.guidance.split(",")]:
        t0 = time.perf_counter()
        res = evaluate_world_model(ckpt, args.dataset, windows=args.windows, steps=args.steps, action_guidance=w)
        fwd, other = res["forward"]["psnr"], res["forward_other_actions"]["psnr"]
        rows[f"{w:g}"] = {
            "horizons": res["horizons"],
            "forward_psnr": fwd,
            "other_actions_psnr": other,
            "gap_db": [a - b for a, b in zip(fwd, other)],
            "forward_ssim": res["forward"]["ssim"],
            "copy_last_frame_psnr": res["copy_last_frame"]["psnr"],
            "video_psnr": res["video"]["psnr"],
            "tokenizer_psnr": res["tokenizer_reconstruction"]["psnr"],
            "windows": res["windows"],
            "sampling_steps": args.steps,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        r = rows[f"{w:g}"]
        print(
            f"W={w:g}: forward {r['forward_psnr'][-1]:.2f} dB, other actions {r['other_actions_psnr'][-1]:.2f} dB, "
            f"gap {r['gap_db'][-1]:.2f} dB ({r['horizons'][-1]} steps ahead; "
            f"copy {r['copy_last_frame_psnr'][-1]:.2f},"
            f" video {r['video_psnr'][-1]:.2f})",
            flush=True,
        )
        write_json_atomic(out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
