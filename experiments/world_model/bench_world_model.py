"""What the world model adds to the policy: the same network trained several ways on the same data and steps,
then evaluated closed loop on the same seeds.

    MUJOCO_GL=egl python experiments/world_model/bench_world_model.py --dataset data/mt50 --tasks mt10 --steps 4000 \\
        --episodes 20 --modes policy,joint --out experiments/world_model/world_model.json
    python experiments/world_model/bench_world_model.py --table        # the README's tables

    (a) policy   the actions only: future frames never in the sequence, no video loss
                 (--loss p_omit_future=1 p_clean_future=0 p_clean_action=0 p_omit_action=0)
    (b) wam      the full WAM: joint video + action denoising with independent noise levels
                 (--loss p_omit_future=0.3, the reference recipe)
    (c) wam+videos  (b) plus action-free videos of every other task of the dataset (or of --videos V), whose
                 actions the model never sees (a quarter of each batch:
                 `--dataset D:3:tasks=T --dataset D:1:no-actions:tasks=rest`)
    (d) wam+task-videos  with --demos N only: (b) on the first N demonstrations of every task, plus the same
                 tasks' other episodes as action-free videos (a quarter of each batch:
                 `--dataset D:3:tasks=T:per-task=..N --dataset D:1:no-actions:tasks=T:per-task=N..`)
    (e) wam-aux  (b) with the policy's own problem kept frequent: the future frames left out of 60% of the
                 examples (action-only, as the policy acts) and the actions noised in 90% (not 70%), so the video
                 loss works as an auxiliary task beside the policy rather than in its place
                 (--loss p_omit_future=0.6 p_omit_action=0.05 p_clean_action=0.05)
    (f) wam+failures  (b) plus perturbed-expert episodes of the same tasks, failed ones kept, as world-only data:
                 their actions condition the world model and are never imitated (a quarter of each batch, shared
                 among the --failures datasets: `--dataset D:3:tasks=T --dataset F:0.5:world-only` for each of
                 two), so that the world model sees what actions other than the expert's do
    (g) wam-far  (b) with the future frames 16 and 32 control steps ahead instead of 4 and 8 (--model
                 future_stride=16; the same number of tokens): 8 steps ahead the frame barely differs from the
                 current one, 32 steps ahead it shows where the task leads, which only a network that has found
                 the goal and the object can predict

--demos N trains every recipe on the first N demonstrations of each task only (the few-demonstrations regime,
where a video loss has the most to add); run it into its own --runs and --out:

    MUJOCO_GL=egl python experiments/world_model/bench_world_model.py --demos 10 --recipes policy,wam,wam+task-videos \
        --runs runs/wm10 --out experiments/world_model/world_model_10demos.json

At three times the budget (12,000 steps, about as many passes over MT10's frames as the MT50 reference makes
over MT50's), on an MT10-only collection (the same episodes: a demonstration's seed depends only on its task and
attempt) and three sets of evaluation seeds, each recipe beside the policy-only run on the same 600
episodes, in policy and joint mode:

    wam collect metaworld --tasks mt10 --episodes 50 --image-size 96 --workers 2 --out data/mt10
    MUJOCO_GL=egl python experiments/world_model/bench_world_model.py --dataset data/mt10 --steps 12000 \\
        --eval-seeds 0,1,2 --modes policy,joint --recipes policy,wam,wam-far --runs runs/wm-far \\
        --out experiments/world_model/world_model_far.json

The table gives each recipe's paired difference from the policy-only run (`wam.stats.paired_difference`:
the same seeds, a bootstrap interval over episodes and McNemar's exact test), which is tighter than comparing
two Wilson intervals.

Equal compute means the same network (wam-tiny at 96 px, 3x3 latent patches, the frozen frame tokenizer of
checkpoints/wam-tiny-mt50), the same optimizer steps, batch size, learning rate and seed; the JSON records each
run's training wall-clock beside it (the policy-only run is cheaper per step: it has no future-frame tokens).
Evaluation: `wam eval` in policy mode, default inference settings, `--episodes` per task on the evaluation
seeds, Wilson intervals. Runs already finished in --runs are reused (an interrupted one resumes), so the
script can be stopped and started again. Each training process uses --threads threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RECIPES = {
    "policy": {"loss": ["p_omit_future=1", "p_clean_future=0", "p_clean_action=0", "p_omit_action=0"], "videos": False},
    "wam": {"loss": ["p_omit_future=0.3"], "videos": False},
    "wam+videos": {"loss": ["p_omit_future=0.3"], "videos": True},
    "wam+task-videos": {"loss": ["p_omit_future=0.3"], "videos": "task"},
    "wam-aux": {"loss": ["p_omit_future=0.6", "p_omit_action=0.05", "p_clean_action=0.05"], "videos": False},
    "wam+failures": {"loss": ["p_omit_future=0.3"], "videos": False, "failures": True},
    "wam-far": {"loss": ["p_omit_future=0.3"], "videos": False, "model": ["future_stride=16"]},
}


def other_tasks(dataset: str, tasks: str) -> list[str]:
    """The dataset's task indices outside `tasks`, as strings for `tasks=` (all of them when it holds none of
    `tasks`, as a --videos dataset of other tasks does)."""
    from wam.data import LeRobotDataset
    from wam.episodes import select_tasks
    from wam.errors import ArgumentError

    texts = list(LeRobotDataset(dataset).tasks)
    try:
        chosen = set(select_tasks(texts, tuple(tasks.split(",")), dataset))
    except ArgumentError:
        chosen = set()
    rest = [str(i) for i in range(len(texts)) if i not in chosen]
    if not rest:
        raise SystemExit(
            f"{dataset} holds no task outside {tasks}, so it has no action-free videos to give; "
            f"collect other tasks (wam collect metaworld --tasks ...) and pass them as --videos"
        )
    return rest


def steps_done(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def train(name: str, args, run: Path, env: dict) -> dict:
    recipe = RECIPES[name]
    demos = f":per-task=..{args.demos}" if args.demos else ""
    mixed = recipe["videos"] or recipe.get("failures")
    data = [f"{args.dataset}:{'3:' if mixed else ''}tasks={args.tasks}{demos}"]
    if recipe.get("failures"):
        if not args.failures:
            raise SystemExit(
                f"{name} needs --failures DATASET[,DATASET]: perturbed-expert episodes "
                f"(wam collect metaworld --action-noise S --keep-failed)"
            )
        fails = args.failures.split(",")
        data += [f"{f}:{1 / len(fails):g}:world-only" for f in fails]
    if recipe["videos"] == "task":
        if not args.demos:
            raise SystemExit(f"{name} needs --demos N: the tasks' episodes after the first N are its videos")
        data.append(f"{args.dataset}:1:no-actions:tasks={args.tasks}:per-task={args.demos}..")
    elif recipe["videos"]:
        source = args.videos or args.dataset
        data.append(f"{source}:1:no-actions:tasks={','.join(other_tasks(source, args.tasks))}")
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "train",
        "--out",
        str(run),
        "--preset",
        "wam-tiny",
        "--model",
        "image_size=96",
        "--model",
        "patch_size=3",
        "--tokenizer-from",
        args.tokenizer_from,
        "--tokenizer-steps",
        "0",
        *[a for kv in [*args.model, *recipe.get("model", [])] for a in ("--model", kv)],
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--val-every",
        str(args.steps),
        "--checkpoint-every",
        "1000",
        "--quiet",
    ]
    for d in data:
        cmd += ["--dataset", d]
    for kv in recipe["loss"]:
        cmd += ["--loss", kv]
    if (run / "checkpoint").exists():
        cmd.append("--resume")
    if steps_done(run) < args.steps:
        t0 = time.time()
        print(f"[{name}] training: {' '.join(cmd[2:])}", flush=True)
        try:
            subprocess.run(cmd, check=True, env=env)
        finally:  # the training's wall-clock, summed over the sittings that ran it (an interrupted one too)
            wall = run / "wall_s.txt"
            before = float(wall.read_text()) if wall.is_file() else 0.0
            wall.write_text(f"{before + time.time() - t0:.1f}\n")
        (run / "threads.txt").write_text(f"{args.threads}\n")
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    trains = [r for r in rows if r.get("kind") == "train"]
    last = trains[-1]
    sps = [r["samples_per_s"] for r in trains if "samples_per_s" in r]
    return {
        "command": "wam " + " ".join(cmd[3:]).replace(" --resume", ""),
        "steps": last["step"],
        "final_loss_action": last.get("loss_action"),
        "final_loss_video": last.get("loss_video"),
        "median_samples_per_s": sorted(sps)[len(sps) // 2] if sps else None,
        "threads": int((run / "threads.txt").read_text()) if (run / "threads.txt").is_file() else None,
        "wall_s": float((run / "wall_s.txt").read_text()) if (run / "wall_s.txt").is_file() else None,
    }


def evaluate(name: str, args, run: Path, env: dict, mode: str = "policy", seed: int = 0) -> dict:
    out = run.parent / (
        (f"{run.name}-eval" if mode == "policy" else f"{run.name}-eval-{mode}") + (f"-seed{seed}" if seed else "")
    )
    info = out / "eval_info.json"
    cmd = [
        sys.executable,
        "-m",
        "wam.cli",
        "eval",
        "--checkpoint",
        str(run / "checkpoint"),
        "--env",
        "metaworld",
        "--tasks",
        args.tasks,
        "--episodes",
        str(args.episodes),
        "--mode",
        mode,
        "--workers",
        str(args.workers),
        "--videos",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    if seed:
        cmd += ["--seed", str(seed)]
    if name != "policy" or mode != "policy" or seed:
        cmd.append("--no-expert")  # the expert runs once, beside the first run
    if not info.is_file():
        print(f"[{name}] evaluating: {' '.join(cmd[2:])}", flush=True)
        resume = ["--resume"] if (out / "tasks").is_dir() else []  # an interrupted evaluation keeps its done tasks
        subprocess.run(cmd + resume, check=True, env=env, stdout=subprocess.DEVNULL)
    r = json.loads(info.read_text())
    res = {
        "command": "wam " + " ".join(cmd[3:]),
        "mode": mode,
        "seed": seed,
        "pc_success": r["pc_success"],
        "ci95": r.get("ci95"),
        "n_episodes": r["n_episodes"],
        "per_task": {t["task"]: t["pc_success"] for t in r["per_task"]},
        "successes": {t["task"]: [bool(x) for x in t["successes"]] for t in r["per_task"]},
    }
    if r.get("expert"):
        res["expert_pc_success"] = r["expert"]["pc_success"]
    return res


def pooled(evals: list[dict]) -> dict:
    """One evaluation over several evaluation seeds (each a disjoint set of episodes): success, Wilson interval,
    per-task success and the per-episode outcomes, keyed by seed then task."""
    from wam.stats import wilson_interval

    if len(evals) == 1:
        return evals[0]
    by_seed = {str(e["seed"]): e["successes"] for e in evals}
    per_task = {t: [x for o in by_seed.values() for x in o[t]] for t in evals[0]["per_task"]}
    flat = [x for xs in per_task.values() for x in xs]
    res = {
        "commands": [e["command"] for e in evals],
        "mode": evals[0]["mode"],
        "seeds": [e["seed"] for e in evals],
        "pc_success": 100 * sum(flat) / len(flat),
        "ci95": [100 * v for v in wilson_interval(sum(flat), len(flat))],
        "n_episodes": len(flat),
        "per_task": {t: 100 * sum(xs) / len(xs) for t, xs in per_task.items()},
        "successes_by_seed": by_seed,
        "by_seed": {str(e["seed"]): e["pc_success"] for e in evals},
    }
    if "expert_pc_success" in evals[0]:
        res["expert_pc_success_seed0"] = evals[0]["expert_pc_success"]
    return res


def outcomes(e: dict) -> dict[tuple[str, str], list[bool]]:
    """(seed, task) -> per-episode outcomes of one (pooled or single-seed) evaluation."""
    by_seed = e.get("successes_by_seed") or {str(e.get("seed", 0)): e.get("successes", {})}
    return {(s, t): xs for s, per_task in by_seed.items() for t, xs in per_task.items()}


def versus_policy(result: dict) -> None:
    """Each recipe against the policy-only run on the episodes both evaluated (same seeds): paired difference,
    bootstrap interval and McNemar's exact test (`wam.stats.paired_difference`)."""
    from wam.stats import paired_difference

    base = result["runs"].get("policy", {}).get("eval")
    a = outcomes(base) if base else {}
    if not a:
        return
    for name, entry in result["runs"].items():
        for key in ("eval", "eval_joint"):  # this run in policy mode, and acting in joint mode
            if name == "policy" or not entry.get(key):
                continue
            b = outcomes(entry[key])
            keys = sorted(set(a) & set(b))
            if keys and all(len(a[k]) == len(b[k]) for k in keys):
                entry[key.replace("eval", "vs_policy")] = paired_difference(
                    [x for k in keys for x in a[k]], [x for k in keys for x in b[k]]
                )


def world_model(run: Path, args) -> dict:
    """Forward / video-mode PSNR of the run's predicted frames on its held-out episodes, beside copying the last
    frame and the tokenizer's own reconstruction (the ceiling): `wam eval --world-model`'s numbers."""
    import torch

    from wam.checkpoint import load_checkpoint
    from wam.evaluate import evaluate_world_model

    torch.set_num_threads(args.threads)
    r = evaluate_world_model(load_checkpoint(run / "checkpoint"), args.dataset)
    n_eps = r["episodes"] if isinstance(r["episodes"], int) else len(r["episodes"])
    return {
        "horizons": r["horizons"],
        "windows": r["windows"],
        "episodes": n_eps,
        "sampling_steps": r["sampling_steps"],
        "forward_psnr": r["forward"]["psnr"],
        "forward_other_actions_psnr": r["forward_other_actions"]["psnr"],
        "video_psnr": r["video"]["psnr"],
        "copy_last_frame_psnr": r["copy_last_frame"]["psnr"],
        "tokenizer_psnr": r["tokenizer_reconstruction"]["psnr"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="data/mt50")
    p.add_argument("--tasks", default="mt10", help="the tasks with actions, which are evaluated")
    p.add_argument(
        "--demos", type=int, default=0, help="train on the first N demonstrations of every task only (0: all of them)"
    )
    p.add_argument(
        "--failures",
        default="",
        metavar="DATASET[,DATASET]",
        help="wam+failures: perturbed-expert datasets of the tasks, trained on as world-only data",
    )
    p.add_argument(
        "--videos",
        default="",
        metavar="DATASET",
        help="wam+videos: take the action-free videos from this dataset's tasks outside --tasks "
        "(default: --dataset's own other tasks)",
    )
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tokenizer-from", default="checkpoints/wam-tiny-mt50")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting the tokenizer needs (e.g. latent_channels=16), repeatable",
    )
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--eval-seeds",
        default="0",
        metavar="S[,S]",
        help="evaluation seeds (`wam eval --seed`), each --episodes per task on its own layouts, pooled",
    )
    p.add_argument("--threads", type=int, default=1, help="threads of each training process")
    p.add_argument(
        "--modes",
        default="policy",
        help="acting modes to evaluate, e.g. policy,joint (joint: the "
        "actions denoised together with the future frames; not for the policy-only run)",
    )
    p.add_argument(
        "--recipes",
        default="policy,wam,wam+videos",
        help="comma-separated, from " + ", ".join(RECIPES) + " (wam+task-videos needs --demos)",
    )
    p.add_argument("--runs", default="runs/wm", help="where the runs and their evaluations go")
    p.add_argument("--out", default="experiments/world_model/world_model.json")
    p.add_argument("--table", action="store_true", help="print the README table of --out and stop")
    p.add_argument(
        "--curve",
        default=None,
        metavar="A.json,B.json,...",
        help="print the WAM's gap over the policy-only run at each of these records' budgets and stop",
    )
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    if args.curve:
        print(curve([json.loads(Path(f).read_text()) for f in args.curve.split(",")]))
        return

    from wam.inference.precision import cpu_description

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("MUJOCO_GL", "egl")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.setdefault("threads", args.threads)  # each run records its own beside its wall-clock
    result.update(
        {
            "dataset": args.dataset,
            "tasks": args.tasks,
            "demos_per_task": args.demos or "all",
            "tokenizer_from": args.tokenizer_from,
            "model": args.model,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "episodes_per_task": args.episodes,
            "cpu": cpu_description(),
            "runs": result.get("runs", {}),
        }
    )
    seeds = [int(x) for x in args.eval_seeds.split(",")]
    result["eval_seeds"] = seeds
    for name in args.recipes.split(","):
        run = Path(args.runs) / name.replace("+", "-")
        entry = result["runs"].setdefault(name, {})
        entry["train"] = train(name, args, run, env)
        for mode in args.modes.split(","):
            if mode == "policy" or name != "policy":  # the policy-only network has no future frames to generate
                evals = [evaluate(name, args, run, env, mode, seed) for seed in seeds]
                entry["eval" if mode == "policy" else f"eval_{mode}"] = pooled(evals)
        if name != "policy" and "world_model" not in entry:
            entry["world_model"] = world_model(run, args)
        if out.is_file():  # another invocation (other --recipes, run beside this one) may have written its rows
            result["runs"] = {**json.loads(out.read_text()).get("runs", {}), name: entry}
        versus_policy(result)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
        e = entry["eval"]
        print(f"[{name}] {e['pc_success']:.1f}% {e.get('ci95')} over {e['n_episodes']} episodes", flush=True)


def curve(records: list[dict]) -> str:
    """Markdown: the WAM against the policy-only network at each budget (one record per training length), in
    both acting modes; the gap paired on the same episodes where the record holds every episode's outcome."""
    lines = [
        "| steps | evaluation seeds (episodes) | policy-only | WAM, policy mode | gap, points [95% CI], McNemar p "
        "| WAM, joint mode | gap, points [95% CI], McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["steps"]):
        versus_policy(r)
        base, wam = r["runs"]["policy"]["eval"], r["runs"]["wam"]
        cells = []
        for key in ("eval", "eval_joint"):
            e, v = wam.get(key), wam.get(key.replace("eval", "vs_policy"))
            if not e:
                cells += ["-", "-"]
                continue
            gap = (
                f"{v['difference']:+.1f} [{v['ci95'][0]:+.1f}, {v['ci95'][1]:+.1f}], p={v['mcnemar_p']:.2g}"
                if v
                else f"{e['pc_success'] - base['pc_success']:+.1f} (not paired: per-episode outcomes not recorded)"
            )
            cells += [f"{e['pc_success']:.1f}", gap]
        seeds = ", ".join(str(s) for s in r.get("eval_seeds") or [0])
        lines.append(
            f"| {r['steps']:,} | {seeds} ({base['n_episodes']}) | {base['pc_success']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def table(result: dict) -> str:
    """Markdown: one row per recipe (in RECIPES' order), then success per task."""
    order = list(RECIPES)
    runs = dict(sorted(result["runs"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    ci = lambda e: f"{e['pc_success']:.1f} [{e['ci95'][0]:.0f}, {e['ci95'][1]:.0f}]" if e else "-"  # noqa: E731
    ahead = next((r["world_model"]["horizons"][-1] for r in runs.values() if r.get("world_model")), None)

    def frames(r: dict) -> str:  # the last horizon: forward-mode PSNR (copy the last frame / tokenizer ceiling)
        w = r.get("world_model")
        if not w:
            return "-"
        other = f"; {w['horizons'][-1]} steps ahead" if w["horizons"][-1] != ahead else ""
        return (
            f"{w['forward_psnr'][-1]:.2f} ({w['copy_last_frame_psnr'][-1]:.2f} / {w['tokenizer_psnr'][-1]:.2f}{other})"
        )

    lines = [
        "| recipe | policy mode: success % [95% CI] | joint mode: success % [95% CI] | forward PSNR dB, "
        f"{f'{ahead} steps ahead' if ahead else 'the last predicted frame'} (copy last frame / tokenizer "
        "ceiling) | minus policy-only, same episodes: points [95% CI], McNemar p (episodes) | wall-clock (loading "
        "included, shared cores) | samples/s | final action loss |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def paired(r: dict) -> str:
        cells = []
        for key, label in (("vs_policy", ""), ("vs_policy_joint", "joint mode: ")):
            if v := r.get(key):
                cells.append(
                    f"{label}{v['difference']:+.1f} [{v['ci95'][0]:+.1f}, {v['ci95'][1]:+.1f}], "
                    f"p={v['mcnemar_p']:.2g} ({v['n_episodes']})"
                )
        return "; ".join(cells) or "-"

    for name, r in runs.items():
        t = r["train"]
        wall = f"{t['wall_s'] / 60:.0f} min" if t.get("wall_s") else "?"
        if t.get("threads") and t["threads"] != result.get("threads"):
            wall += f" ({t['threads']} threads)"
        lines.append(
            f"| {name} | {ci(r['eval'])} | {ci(r.get('eval_joint'))} | {frames(r)} | {paired(r)} | "
            f"{wall} | {t['median_samples_per_s']:.0f} | {t['final_loss_action']:.3f} |"
        )
    tasks = list(next(iter(runs.values()))["eval"]["per_task"])
    lines += ["", "| task | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for task in tasks:
        lines.append(
            f"| {task} | "
            + " | ".join(f"{r['eval']['per_task'].get(task, float('nan')):.0f}" for r in runs.values())
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
