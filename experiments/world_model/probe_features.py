"""What does each network see? Linear probes of what only the simulator knows (the hand, object and goal
positions in `observation.environment_state`) from the features a policy acts on.

A policy-mode WAM reads one thing from the camera: the history frame's tokens after each transformer block
(with "prefix" attention they never see the future or the actions, so they are the same in every mode). If
predicting future frames teaches the network to see, the WAM's history tokens should encode where the
object and the goal are better than a policy-only network's. This fits a ridge regression from those
tokens (all 16 of a frame, concatenated) to each position, on training episodes, and scores it on the
episodes the runs held out, as the share of the **within-task** variance explained (R², each position's
per-task mean removed first, so that knowing the task alone scores 0). Beside them, the same probe on the
frozen tokenizer's latents (what the network is given) and on the 4-D robot state.

Runbook (MT10, the runs of bench_world_model.py):
    python experiments/world_model/probe_features.py \\
        --runs policy=runs/wm-sharp/policy/checkpoint,wam=runs/wm-sharp/wam/checkpoint \\
        --dataset data/mt50 --out experiments/world_model/probe_sharp.json
    python experiments/world_model/probe_features.py --table experiments/world_model/probe_sharp.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

TARGETS = {"hand": slice(0, 3), "object": slice(4, 7), "goal": slice(36, 39)}  # MetaWorld's 39-D layout
ALPHAS = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4)


def environment_states(dataset: Path) -> dict[tuple[int, int], np.ndarray]:
    """(episode_index, frame_index) -> the row's observation.environment_state."""
    out = {}
    for f in sorted((dataset / "data").rglob("*.parquet")):
        t = pq.read_table(f, columns=["episode_index", "frame_index", "observation.environment_state"])
        env = np.stack(t.column("observation.environment_state").to_numpy(zero_copy_only=False))
        for e, i, v in zip(t.column("episode_index").to_numpy(), t.column("frame_index").to_numpy(), env):
            out[int(e), int(i)] = v
    return out


@torch.no_grad()
def features(ck, dataset: Path, episodes: list[int], stride: int, env: dict) -> dict:
    """Per sampled frame of a loaded checkpoint `ck`: the history tokens after every block, the tokenizer's
    latents, the robot state, the task and the environment state. Frames every `stride` steps of the given
    episodes."""
    from wam.data import Normalizer
    from wam.episodes import episodes_to_tensors, load_episodes, map_tasks

    model, cfg, run = ck.model.eval(), ck.model.cfg, ck.config.get("run", {})
    data = load_episodes(
        dataset,
        image_size=cfg.image_size,
        cameras=run.get("cameras"),
        normalizer=Normalizer.from_dict(ck.stats),
        episodes=episodes,
        check=False,
    )
    map_tasks(data, run.get("tasks") or [], dataset)
    tensors = episodes_to_tensors(data.episodes, ck.tokenizer, cfg.action_dim, cfg.state_dim)
    ep, st = tensors.window_index()
    keep = st % stride == 0
    ep, st = ep[keep], st[keep]
    out = {"blocks": [[] for _ in range(cfg.depth)], "latents": [], "state": [], "task": [], "target": []}
    for i in range(0, len(ep), 256):
        b = tensors.gather(ep[i : i + 256], st[i : i + 256], cfg)
        hist = b["latents"][:, : cfg.n_obs_steps]  # (B, n_obs, c, h, w)
        seen = []
        model(
            hist,
            torch.zeros(hist.shape[:2]),
            None,
            None,
            b["task"],
            b["state"],
            hook=lambda k, xs, seen=seen: seen.append(xs[1].flatten(1).float()),
        )  # (B, n_obs * tokens * D)
        for k, x in enumerate(seen):
            out["blocks"][k].append(x.numpy())
        out["latents"].append(hist.flatten(1).float().numpy())
        out["state"].append(b["state"][:, -1].float().numpy())
        out["task"].append(b["task"].numpy())
    for e, s in zip(ep.tolist(), st.tolist()):
        out["target"].append(env[data.episodes[e]["episode_index"], s])
    res = {k: np.concatenate(v) for k, v in out.items() if k not in ("blocks", "target")}
    res["blocks"] = [np.concatenate(v) for v in out["blocks"]]
    res["target"] = np.stack(out["target"]).astype(np.float64)
    return res


def within_task(y: np.ndarray, task: np.ndarray, means: dict) -> np.ndarray:
    return y - np.stack([means[int(t)] for t in task])


def ridge_r2(xtr, ytr, ttr, xte, yte, tte) -> dict[str, float]:
    """Within-task R² of each target group on the held-out frames: features and targets less their task's
    mean on the training frames (a per-task intercept), the ridge strength picked on a split of the training
    frames (their last fifth)."""
    for_y = {int(t): ytr[ttr == t].mean(0) for t in np.unique(ttr)}
    for_x = {int(t): xtr[ttr == t].mean(0) for t in np.unique(ttr)}
    ytr, yte = within_task(ytr, ttr, for_y), within_task(yte, tte, for_y)
    xtr, xte = within_task(xtr, ttr, for_x), within_task(xte, tte, for_x)  # each task's own intercept
    sd = xtr.std(0) + 1e-6
    xtr, xte = xtr / sd, xte / sd

    def fit(x, y, alpha):
        xx = x.T @ x + alpha * len(x) * np.eye(x.shape[1]) / x.shape[1]
        return np.linalg.solve(xx, x.T @ y)

    cut = int(len(xtr) * 0.8)
    best = min(ALPHAS, key=lambda a: ((xtr[cut:] @ fit(xtr[:cut], ytr[:cut], a) - ytr[cut:]) ** 2).sum())
    pred = xte @ fit(xtr, ytr, best)

    def score(rows) -> dict[str, float]:
        return {
            name: float(1 - ((pred[rows, sl] - yte[rows, sl]) ** 2).sum() / (yte[rows, sl] ** 2).sum())
            for name, sl in TARGETS.items()
        }  # around the per-task means of the training frames

    r2 = score(slice(None))
    r2["alpha"] = best
    r2["per_task"] = {int(t): score(tte == t) for t in np.unique(tte)}
    return r2


def probe(checkpoint: str, dataset: Path, stride: int, env: dict) -> dict:
    from wam.checkpoint import load_checkpoint
    from wam.envs.metaworld import DESCRIPTIONS

    ck = load_checkpoint(checkpoint)
    run = ck.config["run"]
    val = sorted(run["val_episodes"])
    tr = features(ck, dataset, run["train_episodes"], stride, env)
    te = features(ck, dataset, val, stride, env)
    rows = {}
    sources = {
        "robot state (4-D)": ("state", None),
        "tokenizer latents": ("latents", None),
        **{f"block {k + 1}": ("blocks", k) for k in range(len(tr["blocks"]))},
    }
    for name, (key, k) in sources.items():
        xtr = tr[key] if k is None else tr[key][k]
        xte = te[key] if k is None else te[key][k]
        rows[name] = ridge_r2(xtr, tr["target"], tr["task"], xte, te["target"], te["task"])
    name_of = {text: name.removesuffix("-v3") for name, text in DESCRIPTIONS.items()}
    tasks = {i: name_of.get(text, text) for i, text in enumerate(run["tasks"])}
    for r in rows.values():
        r["per_task"] = {tasks[t]: v for t, v in r["per_task"].items()}
    return {
        "checkpoint": checkpoint,
        "train_frames": int(len(tr["task"])),
        "test_frames": int(len(te["task"])),
        "test_episodes": val,
        "r2": rows,
    }


def table(result: dict) -> str:
    names = list(result["runs"])
    lines = [
        "| features | " + " | ".join(f"{n}: hand / object / goal" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for src in result["runs"][names[0]]["r2"]:
        cells = []
        for n in names:
            r = result["runs"][n]["r2"].get(src)
            cells.append("n/a" if r is None else f"{r['hand']:.2f} / {r['object']:.2f} / {r['goal']:.2f}")
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    last = list(result["runs"][names[0]]["r2"])[-1]
    lines += [
        "",
        f"Per task, {last} (tokenizer latents in brackets): object / goal R²",
        "",
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for task in result["runs"][names[0]]["r2"][last]["per_task"]:
        cells = []
        for n in names:
            r, z = result["runs"][n]["r2"][last]["per_task"][task], result["runs"][n]["r2"]["tokenizer latents"]
            z = z["per_task"][task]
            cells.append(f"{r['object']:.2f} / {r['goal']:.2f} ({z['object']:.2f} / {z['goal']:.2f})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        default="policy=runs/wm-sharp/policy/checkpoint,wam=runs/wm-sharp/wam/checkpoint",
        help="NAME=CHECKPOINT, comma-separated",
    )
    p.add_argument("--dataset", default="data/mt50", help="the runs' dataset (its episode indices)")
    p.add_argument("--stride", type=int, default=4, help="every stride-th frame of each episode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="experiments/world_model/probe.json")
    p.add_argument("--table", default=None, metavar="JSON")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    from wam.atomic import write_json_atomic

    torch.set_num_threads(args.threads)
    dataset = Path(args.dataset)
    t0 = time.perf_counter()
    env = environment_states(dataset)
    result = {
        "dataset": str(dataset),
        "stride": args.stride,
        "targets": {k: [v.start, v.stop] for k, v in TARGETS.items()},
        "runs": {},
    }
    for item in args.runs.split(","):
        name, ckpt = item.split("=", 1)
        result["runs"][name] = probe(ckpt, dataset, args.stride, env)
        print(
            f"[probe] {name}: " + ", ".join(f"{k} {v['object']:.2f}" for k, v in result["runs"][name]["r2"].items()),
            flush=True,
        )
    result["wall_s"] = time.perf_counter() - t0
    write_json_atomic(Path(args.out), result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
