"""`wam quickstart`: the main job on the embedded default, from demonstrations to a report.

    bash scripts/quickstart.sh          # sets up .venv, then runs: wam quickstart

What it runs, with progress shown throughout (about 10 minutes on 2 CPU cores; see README), all on the
vision protocol: the policy sees one camera and the robot's own hand position and gripper opening, never
the objects' or the goal's positions:
  1. collects MetaWorld demonstrations of three tasks with the scripted experts (a LeRobot dataset of
     `corner4` frames made as the reference's were: the same scene and size; 4-D `observation.state`, the
     simulator's 39-D state kept apart);
  2. trains wam-tiny on them briefly (tokenizer stage, then the WAM stage);
  3. evaluates that model in every mode: forward and video mode frame PSNR/SSIM and inverse-mode action
     error on its held-out episodes, and closed-loop success in policy, joint and inverse mode;
  4. evaluates the MT50 reference checkpoint shipped with wam (camera + proprioception, trained on 50
     demonstrations of each MetaWorld task on this kind of machine) closed-loop on the ten MT10 tasks,
     and as a world model on the new episodes;
  5. writes report.html linking one report per evaluation (each with its eval_info.json).
A briefly trained model is far from the reference: the point of step 2-3 is the whole pipeline on
your machine, the point of step 4 is what the same pipeline gives with more training.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "checkpoints" / "wam-tiny-mt50-v2"  # in the source tree


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    seed: int = 0,
    tasks: str = "reach-v3,button-press-topdown-v3,drawer-close-v3",
    episodes: int = 12,
    steps: int = 1500,
    tokenizer_steps: int = 300,
    eval_episodes: int = 3,
    max_steps: int = 150,
    image_size: int | None = None,
    protocol: str | None = None,
    reference: str | Path | None = REFERENCE,
    reference_tasks: str = "mt10",
    reference_episodes: int = 2,
    model_changes: dict | None = None,
    workers: int | None = None,
) -> dict:
    """Run the five steps (module docstring) into `out`; returns the closed-loop summary, also written to
    out/summary.json, and prints where out/report.html is. The demonstrations are made the way the reference's
    were unless `image_size` (their frames' size) or `protocol` (the benchmark's scene, `wam eval --protocol`)
    say otherwise, so that the reference is measured on frames like its own, and every closed-loop evaluation
    runs on the scene its model was trained for."""
    import os

    from wam.collect import collect

    workers = workers or min(2, os.cpu_count() or 1)  # closed-loop evaluation: tasks spread over processes
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    data, run = root / "data", root / "run"
    if reference is not None and not Path(reference, "model.safetensors").is_file():
        print(f"no reference checkpoint at {reference}: step 4 will be skipped")
        reference = None
    scene = _scene_of(reference) if reference is not None else {"protocol": None, "image_size": 96}
    image_size = image_size or scene["image_size"]
    protocol = protocol or scene["protocol"]

    where = f" on the {protocol!r} protocol's scene" if protocol else ""
    print(f"[1/5] collecting demonstrations{where}: {tasks}, {episodes} episodes each, {image_size} px")
    collect(
        "metaworld",
        tasks=tasks,
        episodes=episodes,
        out=data,
        seed=seed,
        image_size=image_size,
        protocol=protocol,
        overwrite=True,
    )

    print(f"\n[2/5] training wam-tiny for {steps} steps (tokenizer: {tokenizer_steps} steps)")
    ckpt_dir = _train(data, run, steps=steps, tokenizer_steps=tokenizer_steps, seed=seed, model_changes=model_changes)

    print("\n[3/5] the trained model in every mode")
    entries, summary = _evaluate_trained(
        ckpt_dir, data, root, tasks=tasks, episodes=eval_episodes, max_steps=max_steps, seed=seed, workers=workers
    )

    if reference is not None:
        print(
            f"\n[4/5] the reference checkpoint {reference}: {reference_tasks}, {reference_episodes} episodes per task"
        )
        entry = _evaluate_reference(
            Path(reference), data, root, tasks=reference_tasks, episodes=reference_episodes, seed=seed, workers=workers
        )
        entries.insert(0, entry)
        summary["reference"] = {k: entry["eval_info"][k] for k in ("pc_success", "ci95", "n_episodes")}
    else:
        print("\n[4/5] skipped: no reference checkpoint")

    print("\n[5/5] report")
    from wam.report import build_index

    index = build_index(
        root,
        entries,
        notes=[
            f"Trained here: wam-tiny, {steps} steps on {episodes} demonstrations per task of {tasks}; closed loop "
            f"capped at {max_steps} steps per episode.",
            "Reference: the MT50 checkpoint shipped with wam (camera + hand/gripper state, like every model here); "
            "see the README for how it was trained and its full evaluation.",
        ],
    )
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nreport: {index.resolve()}")
    return summary


def _scene_of(reference: str | Path) -> dict:
    """The benchmark protocol (None: wam's own scene) and frame size of the reference checkpoint's training data,
    read from its config.json."""
    config = json.loads(Path(reference, "config.json").read_text())
    return {"protocol": config.get("run", {}).get("protocol"), "image_size": int(config["model"]["image_size"])}


def _train(data: Path, run: Path, *, steps: int, tokenizer_steps: int, seed: int, model_changes: dict | None) -> Path:
    """Step 2: wam-tiny, briefly, from nothing; returns its checkpoint directory."""
    from wam.config import LossConfig
    from wam.train import TrainConfig, train

    tc = TrainConfig(
        steps=steps,
        batch_size=32,
        lr=1e-3,
        warmup_steps=min(200, steps // 5),
        tokenizer_steps=tokenizer_steps,
        seed=seed,
        log_every=50,
        val_every=max(1, steps // 3),
        checkpoint_every=max(1, steps // 3),
    )
    return train(
        data,
        run,
        preset="wam-tiny",
        model_changes=model_changes,
        tc=tc,
        lc=LossConfig(p_omit_future=0.3),
        overwrite=True,
        val_fraction=0.15,
    )


def _evaluate_trained(
    ckpt_dir: Path, data: Path, root: Path, *, tasks: str, episodes: int, max_steps: int, seed: int, workers: int
) -> tuple[list[dict], dict]:
    """Step 3: the world model on held-out episodes, then closed loop in each acting mode; returns the report's
    entries and the summary's rows."""
    from wam.checkpoint import load_checkpoint
    from wam.evaluate import evaluate, evaluate_world_model
    from wam.policy import WAMPolicy

    ckpt = load_checkpoint(ckpt_dir)
    world = evaluate_world_model(ckpt, data, out=root / "eval-policy", seed=seed, progress=False)
    _print_world(world)
    entries, summary = [], {}
    for mode in ("policy", "joint", "inverse"):
        print(f"closed loop, {mode} mode: {episodes} episodes per task, at most {max_steps} steps each")
        info = evaluate(
            WAMPolicy(ckpt, mode=mode, seed=seed),
            env="metaworld",
            tasks=tasks,
            episodes=episodes,
            out=root / f"eval-{mode}",
            seed=seed,
            max_steps=max_steps,
            videos_per_task=1,
            workers=workers,
            world_model=world if mode == "policy" else None,
            log_path=ckpt_dir.parent / "log.jsonl",
            settings={"checkpoint": str(ckpt_dir)},
        )
        _print_success(info)
        entries.append(
            {
                "name": f"trained here, {mode} mode",
                "report": root / f"eval-{mode}" / "report.html",
                "eval_info": info,
                "world_model": world if mode == "policy" else None,
            }
        )
        summary[f"trained_{mode}"] = {k: info[k] for k in ("pc_success", "ci95", "n_episodes")}
    return entries, summary


def _evaluate_reference(
    reference: Path, data: Path, root: Path, *, tasks: str, episodes: int, seed: int, workers: int
) -> dict:
    """Step 4: the shipped checkpoint as a world model on the new episodes and closed loop; its report entry."""
    from wam.checkpoint import load_checkpoint
    from wam.evaluate import evaluate, evaluate_world_model
    from wam.policy import WAMPolicy

    ref = load_checkpoint(reference)
    world = evaluate_world_model(ref, data, out=root / "eval-reference", seed=seed, episodes=_episode_indices(data))
    _print_world(world)
    info = evaluate(
        WAMPolicy(ref, mode="policy", seed=seed),
        env="metaworld",
        tasks=tasks,
        episodes=episodes,
        out=root / "eval-reference",
        seed=seed,
        videos_per_task=1,
        workers=workers,
        world_model=world,
        settings={"checkpoint": str(reference)},
        log_path=reference / "log.jsonl" if (reference / "log.jsonl").is_file() else None,
    )
    _print_success(info)
    return {
        "name": f"reference checkpoint ({reference.name}), policy mode",
        "report": root / "eval-reference" / "report.html",
        "eval_info": info,
        "world_model": world,
    }


def _episode_indices(data: Path) -> list[int]:
    from wam.data.lerobot import read_meta

    return [ep.episode_index for ep in read_meta(data, with_stats=False).episodes]


def _print_world(wm: dict) -> None:
    h = wm["horizons"][0]
    print(
        f"world model on {wm['windows']} held-out windows, frame {h} steps ahead: forward PSNR "
        f"{wm['forward']['psnr'][0]:.2f} dB, video {wm['video']['psnr'][0]:.2f} dB, copy-last-frame "
        f"{wm['copy_last_frame']['psnr'][0]:.2f} dB (tokenizer ceiling "
        f"{wm['tokenizer_reconstruction']['psnr'][0]:.2f}); "
        f"inverse action MSE {wm['inverse']['action_mse']:.4f} vs mean action {wm['inverse']['mean_action_mse']:.4f}"
    )


def _print_success(info: dict) -> None:
    expert = info.get("expert") or {}
    lo, hi = info["ci95"]
    print(
        f"  success {info['pc_success']:.1f}% [{lo:.0f}, {hi:.0f}] over {info['n_episodes']} episodes"
        + (f"; scripted expert on the same seeds {expert['pc_success']:.1f}%" if expert else "")
    )
