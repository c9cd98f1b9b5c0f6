"""`wam <verb>`: each verb parses its arguments and calls one function of the library.

    wam presets                              the model presets with their sizes
    wam quickstart                           the main job on the embedded default
    wam dataset info|check PATH              inspect or validate a LeRobot dataset
    wam collect ENV --tasks T --episodes N   scripted-expert demonstrations -> a LeRobot dataset
    wam train --dataset D --out RUN          train a WAM on a LeRobot dataset (--resume continues a run)
    wam finetune --checkpoint C --dataset D --out RUN --adapter lora|adapter|full   fine-tune on new data
    wam eval --checkpoint C --tasks mt10     closed-loop success beside the expert, world-model metrics, report
    wam serve --checkpoint C                 serve a checkpoint to robots over websockets (wam eval --server URL)
    wam export C --out DIR                   the policy as ONNX (wam serve/bench --runtime onnx; wam.runtime)

Errors that come from the user's input (a bad path, a bad dataset, a bad setting: `wam.errors.WamError`) are
printed as one plain message, the library's argument names turned into this verb's flags, and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from wam.errors import ArgumentError, WamError

# ---- verbs ---------------------------------------------------------------------------------------


def _presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the model presets with their parameter counts and token counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_presets)


def _run_presets(args: argparse.Namespace) -> int:
    from wam.config import PRESETS
    from wam.model import WAM

    rows = []
    for name, cfg in PRESETS.items():
        n = sum(p.numel() for p in WAM(cfg).parameters())
        rows.append(
            {
                "preset": name,
                "params_M": round(n / 1e6, 2),
                "tokens": cfg.tokens,
                "width": cfg.width,
                "depth": cfg.depth,
                "image_size": cfg.image_size,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'preset':<10} {'params':>8} {'tokens':>7} {'width':>6} {'depth':>6} {'image':>6}")
        for r in rows:
            print(
                f"{r['preset']:<10} {r['params_M']:>7.2f}M {r['tokens']:>7} {r['width']:>6} {r['depth']:>6} "
                f"{r['image_size']:>6}"
            )
    return 0


def _quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the main job on the embedded default: collect, train, evaluate, report",
        description="Collect MetaWorld demonstrations, train wam-tiny briefly, evaluate it in every "
        "mode, evaluate the shipped reference checkpoint, and write report.html.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tasks",
        default="reach-v3,button-press-topdown-v3,drawer-close-v3",
        help="MetaWorld tasks to collect, train and evaluate on",
    )
    p.add_argument("--episodes", type=int, default=12, help="demonstrations per task")
    p.add_argument("--steps", type=int, default=1500, help="WAM training steps")
    p.add_argument("--tokenizer-steps", type=int, default=300, help="tokenizer training steps")
    p.add_argument("--eval-episodes", type=int, default=3, help="closed-loop episodes per task and mode")
    p.add_argument("--max-steps", type=int, default=150, help="step cap of the trained model's closed-loop episodes")
    p.add_argument(
        "--protocol",
        default=None,
        choices=["lerobot", "wam"],
        help="the scene the demonstrations are made in and every model is evaluated on (default: the "
        "reference's, so that it is measured on frames like its own)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="the demonstrations' frames (default: the reference's)",
    )
    p.add_argument(
        "--reference", default=None, help="reference checkpoint (default: the one shipped with wam; 'none' to skip)"
    )
    p.add_argument("--reference-tasks", default="mt10", help="tasks the reference checkpoint is evaluated on")
    p.add_argument("--reference-episodes", type=int, default=2, help="episodes per task for the reference")
    p.add_argument("--model", action="append", metavar="KEY=VALUE", help="change a model setting of wam-tiny")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args: argparse.Namespace) -> int:
    from wam.config import ModelConfig
    from wam.quickstart import REFERENCE, quickstart

    reference = None if args.reference == "none" else (args.reference or REFERENCE)
    try:
        quickstart(
            out=args.out,
            seed=args.seed,
            tasks=args.tasks,
            episodes=args.episodes,
            steps=args.steps,
            tokenizer_steps=args.tokenizer_steps,
            eval_episodes=args.eval_episodes,
            max_steps=args.max_steps,
            image_size=args.image_size,
            protocol=args.protocol,
            reference=reference,
            reference_tasks=args.reference_tasks,
            reference_episodes=args.reference_episodes,
            model_changes=_parse_settings(args.model, ModelConfig),
        )
    except ImportError as e:
        raise ArgumentError(f"the quickstart needs MetaWorld ({e}); pip install 'wam[sim,report]'") from None
    return 0


def _dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect (info) or validate (check) a LeRobot dataset (v3.0 or v2.1)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="format, size, cameras, features and tasks of a dataset")
    info.add_argument("path", help="dataset directory (the one holding meta/info.json)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_run_dataset_info)
    check = actions.add_parser("check", help="list every problem of a dataset; exit status 1 when there is one")
    check.add_argument("path", help="dataset directory (the one holding meta/info.json)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    decode = check.add_mutually_exclusive_group()
    decode.add_argument("--no-decode", action="store_true", help="read video packets only, decode no frame")
    decode.add_argument(
        "--decode-all", action="store_true", help="decode every video frame (slower; finds corrupted frame data)"
    )
    check.set_defaults(func=_run_dataset_check)


def _run_dataset_info(args: argparse.Namespace) -> int:
    from wam.data.check import describe
    from wam.data.lerobot import DatasetError

    try:
        d = describe(args.path)
    except DatasetError as e:
        raise ArgumentError(f"{e}\n(`wam dataset check {args.path}` lists every problem)") from None
    except Exception as e:  # noqa: BLE001 (a dataset broken in an unforeseen way: still one sentence, no traceback)
        raise ArgumentError(
            f"cannot read the dataset at {args.path} ({type(e).__name__}: {e}); "
            f"`wam dataset check {args.path}` lists every problem"
        ) from None
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    lengths = d["episode_length"]
    print(f"{'path':<10} {d['root']}")
    print(f"{'format':<10} LeRobot {d['codebase_version']}" + (f", robot {d['robot_type']}" if d["robot_type"] else ""))
    print(f"{'episodes':<10} {d['episodes']} (length {lengths['min']}..{lengths['max']}, mean {lengths['mean']})")
    print(f"{'frames':<10} {d['frames']} at {d['fps']} fps ({d['duration_s'] / 60:.1f} min)")
    print(f"{'stats':<10} {'yes' if d['has_stats'] else 'none stored (computed when loading)'}")
    print("cameras:")
    for k, c in d["cameras"].items():
        codec = f"{c['codec']} {c['pix_fmt']}" if c["codec"] else ""
        print(f"  {k:<36} {c['storage']:<6} {'x'.join(map(str, c['shape'])):<12} {codec}")
    print("features:")
    for k, f in d["features"].items():
        if k not in d["cameras"]:
            print(f"  {k:<36} {f['dtype']:<8} {f['shape']}")
    print(f"tasks ({len(d['tasks'])}):")
    for i, t in enumerate(d["tasks"][:20]):
        print(f"  {i:>3}  {t}")
    if len(d["tasks"]) > 20:
        print(f"  ... and {len(d['tasks']) - 20} more")
    return 0


def _run_dataset_check(args: argparse.Namespace) -> int:
    from wam.data.check import check_dataset

    report = check_dataset(args.path, decode="none" if args.no_decode else "all" if args.decode_all else "first")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    s = report.summary
    if "episodes" in s:
        print(
            f"checked {args.path}: LeRobot {s['version']}, {s['episodes']} episodes, {s['frames']} frames, "
            f"{s.get('video_files', 0)} video files"
        )
    for w in report.warnings:
        print(f"warning: {w}")
    for p in report.problems:
        print(f"problem: {p}")
    if report.ok:
        print("ok: no problems found")
        return 0
    print(f"{len(report.problems)} problem(s) found")
    return 1


def _collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="run scripted experts and write their episodes as a LeRobot v3.0 dataset",
        description="Run an environment's scripted expert in parallel processes and write the "
        "episodes as a LeRobot v3.0 dataset. Example: wam collect metaworld --tasks mt10 "
        "--episodes 50 --out data/mt10. Every --checkpoint-every kept episodes the work "
        "is made safe on disk: an interrupted collection (Ctrl-C, a killed process, a "
        "machine stop) continues with the same command plus --resume.",
    )
    _add_collect_episode_flags(p.add_argument_group("the episodes"))
    _add_collect_scene_flags(p.add_argument_group("the scene and its recording"))
    _add_collect_run_flags(p.add_argument_group("the run"))
    p.set_defaults(func=_run_collect)


def _add_collect_episode_flags(p: argparse._ArgumentGroup) -> None:
    """`wam collect`: which episodes are run and kept."""
    p.add_argument("env", help="environment family: metaworld or dot")
    p.add_argument(
        "--tasks",
        default=None,
        help="task set (metaworld: mt10, mt25, mt50, easy, medium, hard, "
        "very_hard, all) or a comma-separated list of tasks; default: all",
    )
    p.add_argument("--episodes", type=int, required=True, help="episodes to keep per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-failed", action="store_true", help="keep episodes where the expert failed")
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="attempts per task before giving up on reaching --episodes successes (default 4x)",
    )
    p.add_argument("--after-success", type=int, default=10, help="steps recorded after the first success")
    p.add_argument("--max-steps", type=int, default=None, help="cap on episode length (default: the task's limit)")
    p.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="add Gaussian noise of this standard deviation to the expert's actions (with --keep-failed: "
        "failed and partial episodes, for `wam critic`)",
    )


def _add_collect_scene_flags(p: argparse._ArgumentGroup) -> None:
    """`wam collect`: how the episodes are seen and recorded."""
    p.add_argument(
        "--protocol",
        default=None,
        choices=["lerobot", "wam"],
        help="make the frames as a benchmark's evaluation does (wam eval --protocol): lerobot = MetaWorld's "
        "own look and goal markers, rendered at 480 px and resized to --image-size, 400 steps",
    )
    p.add_argument("--image-size", type=int, default=64, help="square frame size in pixels (default 64)")
    p.add_argument("--cameras", default=None, help="comma-separated cameras (default: the environment's default)")
    p.add_argument(
        "--state",
        default=None,
        choices=("proprio", "full"),
        help="metaworld's observation.state: proprio (default: hand xyz + gripper, what a real robot "
        "knows) or full (the 39-D observation with object and goal poses, for ablations); the "
        "39-D vector is always stored as observation.environment_state",
    )
    p.add_argument("--codec", default="h264", help="video codec: h264 (default, 4:4:4) or av1")
    p.add_argument("--crf", type=int, default=None, help="video quality (lower is better; codec default if unset)")


def _add_collect_run_flags(p: argparse._ArgumentGroup) -> None:
    """`wam collect`: where the dataset goes, the processes, resuming."""
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: number of CPU cores)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset at --out (and an interrupted collection of it: start over)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted collection of --out from its last checkpoint, with the same "
        "settings (--workers may differ): the same dataset an uninterrupted run gives",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="N",
        help="make the work safe on disk every N kept episodes (default 100; 0: never)",
    )


def _run_collect(args: argparse.Namespace) -> int:
    from wam.collect import collect

    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None
    try:
        collect(
            args.env,
            tasks=args.tasks,
            episodes=args.episodes,
            out=args.out,
            image_size=args.image_size,
            cameras=cameras,
            workers=args.workers,
            keep_failed=args.keep_failed,
            max_attempts=args.max_attempts,
            after_success=args.after_success,
            max_steps=args.max_steps,
            seed=args.seed,
            codec=args.codec,
            action_noise=args.action_noise,
            crf=args.crf,
            state=args.state,
            overwrite=args.overwrite,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            protocol=args.protocol,
        )
    except (ImportError, OSError) as e:  # a missing extra; the system: an existing output, no GL, a full disk
        raise ArgumentError(str(e)) from None
    return 0


def _parse_settings(pairs: list[str] | None, cls: type) -> dict:
    """KEY=VALUE pairs -> a dict typed after the dataclass's field defaults (bool, int, float, str)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ArgumentError(f"bad setting {pair!r}: use KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = type(fields[key].default)
        try:
            out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except ValueError:
            raise ArgumentError(f"bad setting {pair!r}: {key} takes a {kind.__name__}") from None
    return out


_TRAIN_FLAGS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "latent_shift",
    "ema_decay",
    "precision",
    "seed",
    "tokenizer_steps",
    "tokenizer_detail_weight",
    "tokenizer_checkpoint_every",
    "log_every",
    "val_every",
    "checkpoint_every",
    "keep_every",
)


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a WAM on a LeRobot dataset (tokenizer stage, then the WAM stage)",
        description="Train a WAM on a LeRobot dataset. Example: wam train --dataset data/mt10 "
        "--preset wam-tiny --steps 20000 --out runs/mt10",
    )
    _add_train_data_flags(p.add_argument_group("data and model"))
    _add_train_schedule_flags(p.add_argument_group("schedule (TrainConfig)"))
    _add_train_run_flags(p.add_argument_group("the run and its processes"))
    p.set_defaults(func=_run_train)


def _add_train_data_flags(p: argparse._ArgumentGroup) -> None:
    """`wam train`: what it trains on, and the model and loss settings."""
    p.add_argument(
        "--dataset",
        action="append",
        metavar="PATH[:WEIGHT][:no-actions|:world-only][:tasks=A,B]",
        help="LeRobot dataset directory (v3.0 or v2.1; on --resume, default the run's own). Repeat to "
        "train on a mixture: WEIGHT is the dataset's relative share of each batch (default: by its "
        "size), no-actions trains on its videos only (action-free co-training), world-only trains "
        "the world model on its frames and actions but never imitates them (perturbed or failed "
        "episodes), tasks= reads only those tasks' episodes (task indices, exact task texts, or "
        "MetaWorld names and sets such as mt10); datasets with other action sizes (other robots) are "
        "padded and masked",
    )
    p.add_argument("--preset", default="wam-tiny", help="model preset (see `wam presets`)")
    p.add_argument(
        "--model",
        action="append",
        metavar="KEY=VALUE",
        help="change a model setting of the preset, e.g. --model depth=4 (repeatable)",
    )
    p.add_argument(
        "--loss",
        action="append",
        metavar="KEY=VALUE",
        help="change a loss setting, e.g. --loss p_omit_future=0.3 (repeatable)",
    )
    p.add_argument("--cameras", default=None, help="comma-separated cameras (default: all of the dataset's)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="episodes held out per task for validation")


def _add_train_schedule_flags(p: argparse._ArgumentGroup) -> None:
    """`wam train`: TrainConfig's fields (the schedule, batch, checkpoints) and the tokenizer's start."""
    from wam.config import TrainConfig

    d = TrainConfig()
    for name in _TRAIN_FLAGS:
        default = getattr(d, name)
        shown = "a fifth of --steps, at most 2000" if name == "tokenizer_steps" else default
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=int if default is None else type(default),
            default=None,
            help=f"(default {shown}; on --resume, the run's own)",
        )
    p.add_argument(
        "--tokenizer-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from this checkpoint's frame tokenizer (trained further for --tokenizer-steps; 0 "
        "keeps it as it is) instead of a new one",
    )


def _add_train_run_flags(p: argparse._ArgumentGroup) -> None:
    """`wam train`: where the run goes, resuming it, and its processes."""
    p.add_argument("--out", required=True, help="run directory: checkpoint/, log.jsonl, tb/, run.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start over, replacing the run in --out")
    p.add_argument(
        "--fsdp",
        action="store_const",
        const=True,
        default=None,
        help="with several processes, shard weights, gradients and optimizer state over them (FSDP2) "
        "instead of a full copy each (DDP): for presets too large for one device",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train in N data-parallel processes on this machine (launches torchrun; the batch size "
        "stays the global one). Several machines: run torchrun yourself, see the README",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from wam.distributed import launch

        argv = args.argv
        return launch(
            args.nproc,
            [
                a
                for i, a in enumerate(argv)
                if a != "--nproc" and not a.startswith("--nproc=") and argv[i - 1] != "--nproc"
            ],
        )

    from wam.config import LossConfig, ModelConfig, from_dict
    from wam.episodes import run_dataset_specs
    from wam.train import TrainConfig, train

    given = {k: getattr(args, k) for k in (*_TRAIN_FLAGS, "fsdp") if getattr(args, k) is not None}
    loss = _parse_settings(args.loss, LossConfig)
    tc = lc = None
    run_file = Path(args.out) / "run.json"
    if args.resume and run_file.is_file():  # the run's own settings, changed only where flags were given
        saved = json.loads(run_file.read_text())
        if given:
            tc = from_dict(TrainConfig, {**saved["train"], **given})
        if loss:
            lc = from_dict(LossConfig, {**saved["loss"], **loss})
    else:
        try:
            tc = TrainConfig(**given)
            lc = LossConfig(**loss)
        except (TypeError, ArgumentError) as e:
            raise ArgumentError(f"invalid training settings: {e}") from None
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None
    if not args.dataset:
        if not (args.resume and run_file.is_file()):
            raise ArgumentError(
                "pass --dataset PATH (the dataset to train on; only --resume of an existing run may leave it out)"
            )
        args.dataset = run_dataset_specs(json.loads(run_file.read_text()))
    dataset = args.dataset if len(args.dataset) > 1 else args.dataset[0]
    ckpt = train(
        dataset,
        args.out,
        preset=args.preset,
        model_changes=_parse_settings(args.model, ModelConfig),
        tc=tc,
        lc=lc,
        cameras=cameras,
        val_fraction=args.val_fraction,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        tokenizer_from=args.tokenizer_from,
    )
    if os.environ.get("RANK", "0") == "0":  # (under torchrun, every process returns here)
        print(f"checkpoint: {ckpt}")
    return 0


def _taylor(text: str):
    from wam.inference import TaylorSeer

    try:
        parts = [float(x) for x in text.split(":")]
        if not 2 <= len(parts) <= 3:
            raise ValueError
        return TaylorSeer(order=int(parts[0]), interval=int(parts[1]), gate=parts[2] if len(parts) == 3 else 0.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--taylor takes ORDER:INTERVAL[:GATE], e.g. 1:2 or 1:3:0.05; got {text!r}"
        ) from None


# how a chunk is sampled: every flag sets one field of wam.inference.InferenceConfig (unset: its default)
_INFERENCE_FLAGS = (
    ("--steps", dict(type=int), "denoising steps per chunk"),
    ("--solver", dict(), "ODE solver: euler, heun or ab2"),
    ("--schedule", dict(), "noise-level schedule: linear or shifted"),
    ("--cfg-scale", dict(type=float), "classifier-free guidance scale (1: none)"),
    (
        "--no-cache",
        dict(action="store_const", const=False, dest="cache"),
        "recompute the observed tokens' keys and values at every step (the cache is exact)",
    ),
    (
        "--taylor",
        dict(type=_taylor, metavar="ORDER:INTERVAL[:GATE]"),
        "TaylorSeer feature forecasting: a full step every INTERVAL, forecasts of ORDER between, GATE > 0 falls back "
        "to a full step when the first block's forecast is off by more than GATE",
    ),
    (
        "--warm-start",
        dict(type=float, metavar="T"),
        "policy mode: start each chunk from the previous one re-noised to T (0: off)",
    ),
    ("--precision", dict(), "fp32 or bf16 (autocast)"),
    ("--quantize", dict(), "none or int8 (dynamic quantisation of the blocks' linear layers, CPU)"),
    ("--compile", dict(action="store_const", const=True), "torch.compile the network (the first calls compile)"),
    ("--attention", dict(), "attention kernel: sdpa, block_sparse or sage (CUDA, needs sageattention)"),
)


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plan",
        type=int,
        default=1,
        metavar="N",
        help="test-time planning: imagine N joint futures (frames and actions) per chunk and act on the "
        "one the critic scores highest (needs --mode joint or inverse, and a critic: `wam critic`)",
    )
    p.add_argument(
        "--plan-score",
        default="imagined",
        choices=("imagined", "forward"),
        help="which future --plan scores: the frames imagined with the actions (default), or those the "
        "world model predicts from each candidate's actions alone (forward mode; any --mode)",
    )
    p.add_argument(
        "--plan-guidance",
        type=float,
        default=1.0,
        metavar="W",
        help="with --plan-score forward: predict the candidates' futures with guidance W on their actions "
        "(W > 1: the frames follow the actions more than the data's prior)",
    )
    p.add_argument(
        "--critic",
        default=None,
        metavar="DIR",
        help="the critic --plan scores with (default: <checkpoint>/critic, written by `wam critic`)",
    )


def _critic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "critic",
        help="train the outcome model that scores imagined futures (for --plan)",
        description="Train a checkpoint's critic: from one frame's latents (the checkpoint's own "
        "tokenizer) and the task, the task's progress (the dataset's reward, scaled to "
        "[0, 1]) and whether it is done (next.success). --plan N scores imagined futures "
        "with it. Example: wam critic --checkpoint checkpoints/wam-tiny-mt50-v2 --dataset "
        "runs/mt50-v2/data (the data its recipe collected)",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (written by wam train)")
    p.add_argument(
        "--dataset",
        action="append",
        required=True,
        help="dataset with next.reward and next.success, PATH or PATH:tasks=A,B (repeat for several)",
    )
    p.add_argument("--out", default=None, help="where to write it (default: <checkpoint>/critic)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--imagined",
        action="store_true",
        help="train on imagined frames too: the checkpoint imagines every episode along its recorded "
        "actions, each imagined frame labelled with the real episode's outcome (for wam imagine)",
    )
    p.add_argument(
        "--imagine-steps",
        type=int,
        default=2,
        help="with --imagined: denoising steps of each imagined frame (as wam imagine --world-steps)",
    )
    p.add_argument(
        "--action-guidance",
        type=float,
        default=1.0,
        metavar="W",
        help="with --imagined: action guidance of the imagined frames (as wam imagine's)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_critic)


def _imagine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "imagine",
        help="evaluate a policy inside the world model: imagined episodes from real start frames, scored by the critic",
        description="Policy evaluation in imagination: from real start frames (the simulator's for "
        "wam eval's seeds, or held-out episodes'), a policy acts on frames the world "
        "model imagines (forward mode) and the critic scores each (progress, done). "
        "Writes imagine_info.json (wam eval's format), videos and report.html. Example: "
        "wam imagine --checkpoint checkpoints/wam-tiny-mt50-v2 --tasks mt10 --episodes 5",
    )
    _add_imagine_world_flags(p.add_argument_group("the world model"))
    _add_imagine_policy_flags(p.add_argument_group("the policy"))
    _add_imagine_episode_flags(p.add_argument_group("the episodes and what is written"))
    _add_inference_flags(p, note=" (the policy's)")
    p.set_defaults(func=_run_imagine)


def _add_imagine_world_flags(p: argparse._ArgumentGroup) -> None:
    """`wam imagine`: the world the policy acts in, and when an imagined episode counts as done."""
    p.add_argument("--checkpoint", required=True, help="the world model: a checkpoint directory with a critic")
    p.add_argument("--critic", default=None, metavar="DIR", help="its critic (default: <checkpoint>/critic)")
    p.add_argument("--world-steps", type=int, default=2, help="denoising steps of each imagined frame")
    p.add_argument(
        "--action-guidance",
        type=float,
        default=1.0,
        metavar="W",
        help="guidance on the actions when imagining frames: video(no actions) + W x (forward - video); "
        "W > 1 makes the imagined frames follow the policy's actions more than the data's prior",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="critic probability that counts as done")
    p.add_argument(
        "--persist",
        type=int,
        default=1,
        metavar="K",
        help="an imagined episode succeeds once K imagined frames in a row are judged done",
    )


def _add_imagine_policy_flags(p: argparse._ArgumentGroup) -> None:
    """`wam imagine`: which policy acts, and how."""
    p.add_argument(
        "--policy",
        default=None,
        metavar="CHECKPOINT",
        help="the policy evaluated (default: the world model's own checkpoint, as a policy)",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="evaluate the policy served at URL instead (wam serve, or the peers' server)",
    )
    p.add_argument("--token", default=None, help="the server's token (default: $WAM_SERVE_TOKEN)")
    p.add_argument("--server-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--mode", default=None, help="the policy's acting mode (policy, joint or inverse)")
    p.add_argument("--n-action-steps", type=int, default=None, help="the policy's actions per chunk")
    p.add_argument("--blind", action="store_true", help="black out the policy's camera (a policy that cannot see)")


def _add_imagine_episode_flags(p: argparse._ArgumentGroup) -> None:
    """`wam imagine`: where the episodes start, what they are compared with, what is written."""
    p.add_argument("--env", default="metaworld", help="environment family of the tasks (start frames, limits)")
    p.add_argument("--tasks", default=None, help="task set or comma-separated tasks (default: the training tasks)")
    p.add_argument("--episodes", type=int, default=5, help="imagined episodes per task")
    p.add_argument(
        "--start",
        default="sim",
        choices=("sim", "dataset"),
        help="start frames: sim (the simulator's first frame for wam eval's seeds) or dataset (the "
        "world model's held-out episodes)",
    )
    p.add_argument("--dataset", default=None, help="--start dataset: the dataset (default: the training dataset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="cap on episode length (default: the task's limit)")
    p.add_argument("--videos", type=int, default=2, help="imagined episodes saved as video per task")
    p.add_argument(
        "--compare",
        default=None,
        metavar="EVAL_INFO",
        help="a simulated evaluation (eval_info.json) to print beside the imagined one",
    )
    p.add_argument(
        "--replay",
        default=None,
        metavar="DATASET",
        help="judge DATASET's recorded episodes instead (e.g. from `wam eval --record`): each imagined "
        "along its own actions from its first frame, judged beside its real outcome "
        "(OUT/replay.json); no policy acts",
    )
    p.add_argument(
        "--real",
        action="store_true",
        help="with --replay: also judge the recorded frames with the same critic and measure each imagined "
        "frame against the recorded one (PSNR), beside the first frame held still",
    )
    p.add_argument("--out", default="runs/imagine", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_imagine(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from wam.checkpoint import load_checkpoint
    from wam.critic import load_critic
    from wam.imagine import compare, imagine

    world = load_checkpoint(args.checkpoint)
    critic = load_critic(args.critic or Path(args.checkpoint) / "critic")
    if args.replay is not None:
        return _replay(args, world, critic)
    policy, source = _imagine_policy(args, world)
    tasks = args.tasks or _training_tasks(args.env, world.config.get("run", {}).get("tasks"))
    try:
        info = imagine(
            world,
            critic,
            policy,
            env=args.env,
            tasks=tasks,
            episodes=args.episodes,
            start=args.start,
            dataset=args.dataset,
            seed=args.seed,
            max_steps=args.max_steps,
            sampling_steps=args.world_steps,
            threshold=args.threshold,
            persist=args.persist,
            videos_per_task=args.videos,
            action_guidance=args.action_guidance,
            out=args.out,
            settings=source,
            progress=not args.quiet,
        )
    finally:
        if args.server is not None:
            policy.close()
    print(
        f"imagined success {info['pc_success']:.1f}% [{info['ci95'][0]:.0f}, {info['ci95'][1]:.0f}] over "
        f"{info['n_episodes']} episodes; {Path(args.out) / 'imagine_info.json'}, {Path(args.out) / 'report.html'}"
    )
    if args.compare:
        both = compare(info, json.loads(Path(args.compare).read_text()))
        for r in both["tasks"]:
            print(f"  {r['task']:<28} imagined {r['imagined']:5.1f}%   simulated {r['simulated']:5.1f}%")
        print(f"  {'all':<28} imagined {both['imagined']:5.1f}%   simulated {both['simulated']:5.1f}%")
    return 0


def _imagine_policy(args: argparse.Namespace, world):
    """`wam imagine`'s policy (a served one, --policy's checkpoint, or the world model's own) and where it is
    from, for the settings."""
    if args.server is not None:
        if args.policy is not None:
            raise ArgumentError("pass --policy CHECKPOINT or --server URL, not both")
        return _connect(args), {"server": args.server}
    from wam.checkpoint import load_checkpoint
    from wam.policy import WAMPolicy

    ckpt = load_checkpoint(args.policy) if args.policy else world
    policy = WAMPolicy(
        ckpt,
        mode=args.mode or "policy",
        n_action_steps=args.n_action_steps,
        seed=args.seed,
        blind=args.blind,
        **_inference_overrides(args),
    )
    return policy, {"policy_checkpoint": str(args.policy or args.checkpoint)}


def _replay(args: argparse.Namespace, world, critic) -> int:
    from pathlib import Path

    from wam.atomic import write_json_atomic
    from wam.imagine import replay, replay_summary

    if args.policy is not None or args.server is not None:
        raise ArgumentError(
            "--replay judges recorded episodes, whose actions are given; leave out --policy and --server"
        )
    verdicts = replay(
        world,
        critic,
        args.replay,
        sampling_steps=args.world_steps,
        threshold=args.threshold,
        persist=args.persist,
        action_guidance=args.action_guidance,
        seed=args.seed,
        real=args.real,
        progress=not args.quiet,
    )
    summary = replay_summary(verdicts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "replay.json",
        {
            "dataset": str(args.replay),
            "world_model": str(args.checkpoint),
            "critic": getattr(critic, "path", None),
            "settings": {
                "world_sampling_steps": args.world_steps,
                "threshold": args.threshold,
                "persist": args.persist,
                "action_guidance": args.action_guidance,
                "seed": args.seed,
                "real": args.real,
            },
            "summary": summary,
            "verdicts": verdicts,
        },
    )
    extra = f" {'recorded judged right':>22} {'PSNR imagined / still':>22}" if args.real else ""
    print(f"{'task':<58} {'episodes':>8} {'real':>6} {'imagined':>9} {'judged right':>13}{extra}")
    for task, r in [*summary["per_task"].items(), ("all", summary)]:
        extra = ""
        if args.real:
            dbs = "-" if r["psnr"] is None else f"{r['psnr']:.1f} / {r['psnr_still']:.1f}"
            extra = f" {100 * r['recorded_accuracy']:>21.0f}% {dbs:>22}"
        print(
            f"{task[:58]:<58} {r['episodes']:>8} {r['real_pc_success']:>5.0f}% {r['imagined_pc_success']:>8.0f}% "
            f"{100 * r['accuracy']:>12.0f}%{extra}"
        )
    print(f"{out / 'replay.json'}")
    return 0


def _run_critic(args: argparse.Namespace) -> int:
    import json

    from wam.critic import train_critic

    metrics = train_critic(
        args.checkpoint,
        args.dataset,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.quiet,
        imagined=args.imagined,
        imagine_steps=args.imagine_steps,
        action_guidance=args.action_guidance,
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _add_inference_flags(p: argparse.ArgumentParser, note: str = "") -> None:
    import dataclasses

    from wam.inference import InferenceConfig

    defaults = {f.name: f.default for f in dataclasses.fields(InferenceConfig)}
    for flag, kw, text in _INFERENCE_FLAGS:
        dest = kw.get("dest", flag[2:].replace("-", "_"))
        shown = "" if kw.get("action") else f" (default {defaults[dest]}{note})"
        p.add_argument(flag, default=None, help=text + shown, **kw)


def _inference_overrides(args: argparse.Namespace) -> dict:
    """The InferenceConfig fields the user set on the command line."""
    out = {}
    for flag, kw, _ in _INFERENCE_FLAGS:
        dest = kw.get("dest", flag[2:].replace("-", "_"))
        if getattr(args, dest, None) is not None:
            out[dest] = getattr(args, dest)
    return out


def _eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="closed-loop evaluation in simulation (and world-model metrics), with a report",
        description="Evaluate a checkpoint closed-loop on simulated tasks, the scripted expert on the "
        "same seeds beside it; writes eval_info.json, rollout videos and report.html. "
        "Example: wam eval --checkpoint runs/mt10/checkpoint --env metaworld --tasks mt10 "
        "--episodes 20 --mode policy; or, through a running `wam serve`: wam eval --server "
        "ws://127.0.0.1:8765 --tasks mt10 --episodes 20",
    )
    _add_eval_policy_flags(p)
    _add_eval_scene_flags(p.add_argument_group("the episodes"))
    _add_eval_output_flags(p.add_argument_group("what is run and written"))
    p.set_defaults(func=_run_eval)


def _add_eval_policy_flags(p: argparse.ArgumentParser) -> None:
    """`wam eval`: which policy acts, and how (a checkpoint or a server; its mode and inference settings)."""
    g = p.add_argument_group("the policy")
    g.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint directory (written by wam train); with --server, needed only for --world-model",
    )
    g.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="evaluate the policy served by `wam serve` at URL (ws://HOST:PORT) instead of a local checkpoint",
    )
    g.add_argument("--token", default=None, help="the server's token (default: $WAM_SERVE_TOKEN)")
    g.add_argument(
        "--server-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="with --server: seconds to wait for each answer (default 30; slow policies need more)",
    )
    g.add_argument(
        "--mode", default=None, help="acting mode: policy (default; with --server, the server's), joint or inverse"
    )
    g.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="actions executed per predicted chunk (default: half the horizon)",
    )
    _add_plan_flags(p)
    _add_inference_flags(p, note="; with --server, the server's")


def _add_eval_scene_flags(p: argparse._ArgumentGroup) -> None:
    """`wam eval`: the episodes it is scored on (environment, tasks, seeds, the benchmark's protocol)."""
    p.add_argument("--env", default="metaworld", help="environment family: metaworld or dot")
    p.add_argument("--tasks", default=None, help="task set or comma-separated tasks (default: the training tasks)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task")
    p.add_argument(
        "--seed",
        type=_eval_seed,
        default=0,
        metavar="SEED|dev|test",
        help="evaluation seed (episode layouts and sampling noise), or a named seed set: dev (= 0; choose "
        "on it) or test (report on it, once per checkpoint)",
    )
    p.add_argument(
        "--protocol",
        default=None,
        choices=["lerobot", "wam"],
        help="a benchmark's fixed settings: lerobot = MetaWorld as LeRobot presents it (MetaWorld's own "
        "goal markers and look, rendered at 480 px and resized, 400 steps, corner4, 4-D state), the "
        "protocol of published MT50 results; wam = 4 cm goal markers, fast look at the model's size "
        "(default: the protocol the checkpoint's training data was collected under, if it records one)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="cap on episode length (default: the task's limit)")
    p.add_argument(
        "--render-size",
        type=int,
        default=None,
        metavar="PX",
        help="render the cameras at PX pixels; the policy resizes each frame to its own image size, as "
        "it did its training frames (default: render at the policy's size)",
    )
    p.add_argument(
        "--blind",
        action="store_true",
        help="black out every camera image before the policy sees it (how much of the success comes from seeing)",
    )
    p.add_argument(
        "--after-success",
        type=int,
        default=0,
        metavar="N",
        help="steps an episode goes on after its first success (default 0: it ends there; with "
        "--record, 10 keeps the frames after success that `wam collect` keeps)",
    )


def _add_eval_output_flags(p: argparse._ArgumentGroup) -> None:
    """`wam eval`: what runs beside the policy, how the work is spread, and what is written."""
    p.add_argument("--videos", type=int, default=2, help="rollout videos saved per task")
    p.add_argument("--no-expert", action="store_true", help="skip the scripted expert on the same seeds")
    p.add_argument(
        "--workers", type=int, default=1, help="processes the tasks are spread over (results do not depend on it)"
    )
    p.add_argument(
        "--num-envs",
        type=int,
        default=1,
        help="environments of a task run at once, each in its own "
        "process, the policy batched over them (results do "
        "not depend on it)",
    )
    p.add_argument(
        "--record",
        default=None,
        metavar="DATASET",
        help="also write the policy's episodes (failures too) to a new LeRobot dataset at DATASET: "
        "cameras, robot state, actions, rewards, success flags, as `wam collect` writes the "
        "expert's (data for `wam critic` and for world models)",
    )
    p.add_argument(
        "--world-model",
        action="store_true",
        help="also measure forward/video frame PSNR and SSIM on the run's held-out episodes",
    )
    p.add_argument("--dataset", default=None, help="dataset for --world-model (default: the training dataset)")
    p.add_argument("--out", default=None, help="output directory (default: runs/eval-<mode>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted evaluation in --out: the tasks it finished with the same policy, "
        "settings and seeds are kept, the others run (the numbers are those of an uninterrupted run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _eval_seed(text: str) -> int:
    from wam.evaluate import resolve_seed

    try:
        return resolve_seed(text)[0]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_eval(args: argparse.Namespace) -> int:
    from wam.checkpoint import load_checkpoint

    if args.checkpoint is None and args.server is None:
        raise ArgumentError("pass --checkpoint DIR, or --server ws://HOST:PORT to evaluate a running `wam serve`")
    from pathlib import Path

    if args.record is not None and Path(args.record).exists():
        raise ArgumentError(f"--record {args.record} already exists; choose a new path for the rollouts' dataset")
    if args.after_success < 0:
        raise ArgumentError(f"--after-success must be >= 0, got {args.after_success}")
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint is not None else None
    if args.blind and args.server is not None:
        raise ArgumentError("--blind applies to a local --checkpoint; a served policy sees what its clients send")
    if args.server is None:
        from wam.policy import WAMPolicy

        policy = WAMPolicy(
            ckpt,
            mode=args.mode or "policy",
            n_action_steps=args.n_action_steps,
            seed=args.seed,
            blind=args.blind,
            plan=args.plan,
            critic=args.critic,
            plan_score=args.plan_score,
            plan_guidance=args.plan_guidance,
            **_inference_overrides(args),
        )
        return _eval_policy(
            args, policy, ckpt, ckpt.config.get("run", {}).get("tasks"), {"checkpoint": str(args.checkpoint)}
        )
    _check_served_settings(args)
    client = _connect(args)  # (checks that the serve extra is installed)
    from wam.client import ServerError

    with client:
        if ckpt is not None and ckpt.model_hash != client.metadata["model_hash"]:
            raise ArgumentError(
                f"--checkpoint {args.checkpoint} (model {ckpt.model_hash}) is not the model the server "
                f"serves ({client.metadata['model_hash']})"
            )
        try:
            return _eval_policy(args, client, ckpt, client.tasks, {"server": args.server})
        except ServerError as e:
            raise ArgumentError(f"the server refused a request: {e}") from None


def _check_served_settings(args: argparse.Namespace) -> None:
    """`wam eval --server`: the sampling and planning settings are the server's, and one connection is used."""
    flags = {kw.get("dest", f[2:].replace("-", "_")): f for f, kw, _ in _INFERENCE_FLAGS}
    given = [flags[name] for name in _inference_overrides(args)]
    if given:
        raise ArgumentError(
            f"{', '.join(given)}: with --server the sampling settings are the server's; pass them to `wam serve`"
        )
    if args.plan != 1 or args.critic is not None or args.plan_score != "imagined" or args.plan_guidance != 1:
        raise ArgumentError(
            "--plan, --plan-score, --plan-guidance and --critic are the server's settings with "
            "--server; pass them to `wam serve`"
        )
    if args.workers > 1:
        raise ArgumentError("--server evaluates through one connection; use --workers 1")


def _connect(args: argparse.Namespace):
    """A PolicyClient of the server at --server, with the flags' seed, mode, actions per chunk and timeout."""
    try:
        from wam.client import PolicyClient
    except ImportError as e:
        raise ArgumentError(f"--server needs the serve extra ({e}); pip install 'wam[serve]'") from None
    try:
        return PolicyClient(
            args.server,
            token=args.token,
            seed=args.seed,
            mode=args.mode,
            n_action_steps=args.n_action_steps,
            timeout=args.server_timeout,
        )
    except OSError as e:  # unreachable or refused (a setting the server does not offer: ArgumentError)
        raise ArgumentError(str(e)) from None


def _training_tasks(env: str, known_tasks: list[str] | None) -> list[str] | None:
    """The environment's task names of a checkpoint's training tasks (stored as their text); None: unknown."""
    from wam.envs import get_adapter

    adapter = get_adapter(env)
    by_text = {adapter.describe(name): name for name in adapter.resolve_tasks(None)}
    return [by_text[t] for t in known_tasks or [] if t in by_text] or None


def _eval_policy(args: argparse.Namespace, policy, ckpt, known_tasks: list[str] | None, settings: dict) -> int:
    """The rest of `wam eval` for a local or a remote policy."""
    from pathlib import Path

    from wam.evaluate import evaluate, evaluate_world_model

    run = ckpt.config.get("run", {}) if ckpt is not None else {}
    if args.render_size is not None and args.render_size < 16:
        raise ArgumentError(f"--render-size must be at least 16 pixels, got {args.render_size}")
    tasks = args.tasks
    if tasks is None and args.env == "metaworld":
        tasks = _training_tasks(args.env, known_tasks)
    out = Path(args.out or f"runs/eval-{policy.mode}")
    world = None
    if args.world_model:
        if ckpt is None:
            raise ArgumentError("--world-model reads the model's weights: pass --checkpoint DIR too")
        steps = policy.settings["sampling_steps"]
        dataset = args.dataset or run.get("dataset")
        if not dataset or not Path(dataset).exists():
            raise ArgumentError(
                f"--world-model needs the dataset the checkpoint was trained on ({dataset!r} not "
                f"found); pass --dataset PATH"
            )
        world = evaluate_world_model(ckpt, dataset, out=out, steps=steps, seed=args.seed, progress=not args.quiet)
    log = None
    if ckpt is not None:
        logs = [Path(args.checkpoint) / "log.jsonl", Path(args.checkpoint).parent / "log.jsonl"]  # shipped, or a run's
        log = next((p for p in logs if p.is_file()), None)
    try:
        info = evaluate(
            policy,
            env=args.env,
            tasks=tasks,
            episodes=args.episodes,
            out=out,
            seed=args.seed,
            max_steps=args.max_steps,
            expert=not args.no_expert,
            videos_per_task=args.videos,
            workers=args.workers,
            num_envs=args.num_envs,
            world_model=world,
            log_path=log,
            settings=settings,
            render_size=args.render_size,
            after_success=args.after_success,
            protocol=args.protocol,
            record=args.record,
            resume=args.resume,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        done = len(list((out / "tasks").glob("*.json"))) if (out / "tasks").is_dir() else 0
        print(f"\ninterrupted: {done} task(s) kept in {out / 'tasks'}; add --resume to continue", file=sys.stderr)
        raise
    except (ImportError, OSError) as e:  # a missing extra; the system: no GL, a full disk
        raise ArgumentError(str(e)) from None
    print_eval(info)
    print(f"report: {out / 'report.html'}")
    return 0


def print_eval(info: dict) -> None:
    """The success table of an eval_info dict, as text."""
    print(f"{'task':<28} {'success':>8} {'95% CI':>14} {'expert':>8}")
    for r in info["per_task"]:
        lo, hi = r["ci95"]
        expert = "" if r["expert_pc_success"] is None else f"{r['expert_pc_success']:.0f}%"
        print(f"{r['task']:<28} {r['pc_success']:>7.0f}% {f'[{lo:.0f}, {hi:.0f}]':>14} {expert:>8}")
    lo, hi = info["ci95"]
    expert = "" if not info.get("expert") else f"{info['expert']['pc_success']:.1f}%"
    print(f"{'overall':<28} {info['pc_success']:>7.1f}% {f'[{lo:.0f}, {hi:.0f}]':>14} {expert:>8}")
    groups = info.get("groups") or {}
    if len(groups) > 1 or (groups and len(info["per_task"]) > len(next(iter(groups.values()))["tasks"])):
        for name, g in groups.items():
            lo, hi = g["ci95"]
            expert = f"{g['expert_pc_success']:.1f}%" if "expert_pc_success" in g else ""
            label = f"group {name} ({len(g['tasks'])})"
            print(f"{label:<28} {g['pc_success']:>7.1f}% {f'[{lo:.0f}, {hi:.0f}]':>14} {expert:>8}")
        gm = info["group_mean"]
        lo, hi = gm["ci95"]
        expert = f"{gm['expert_pc_success']:.1f}%" if "expert_pc_success" in gm else ""
        print(f"{'mean of group means':<28} {gm['pc_success']:>7.1f}% {f'[{lo:.0f}, {hi:.0f}]':>14} {expert:>8}")
    wm = info.get("world_model")
    if wm:
        print("world model (PSNR dB at horizons " + ", ".join(map(str, wm["horizons"])) + " steps):")
        for name in ("forward", "forward_other_actions", "video", "copy_last_frame", "tokenizer_reconstruction"):
            if name in wm:
                print(f"  {name:<26} " + "  ".join(f"{v:6.2f}" for v in wm[name]["psnr"]))
        inv = wm["inverse"]
        print(
            f"  inverse action MSE {inv['action_mse']:.4f} (mean action: {inv['mean_action_mse']:.4f}); "
            f"policy {wm['policy']['action_mse']:.4f}"
        )


def _bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="inference latency, FLOPs and quality of one setting against the reference path",
        description="Time one inference setting on the checkpoint's held-out episodes beside the "
        "reference path (joint mode, 50 Euler steps, no caches, fp32) on the same inputs "
        "and noise; prints JSON (latency median/p90, calls/s, FLOPs, achieved FLOP/s, "
        "quality deltas). Example: wam bench --checkpoint checkpoints/wam-tiny-mt10 "
        "--mode policy --steps 1",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument(
        "--mode",
        default="policy",
        help="policy, joint, inverse (acting: a call is one chunk) or "
        "forward, video (a call is one window's future frames)",
    )
    _add_inference_flags(p)
    p.add_argument(
        "--dataset", default=None, help="dataset whose held-out episodes are replayed (default: the training dataset)"
    )
    p.add_argument("--episodes", type=int, default=5, help="held-out episodes replayed (acting modes)")
    p.add_argument("--windows", type=int, default=40, help="windows sampled (world-model modes)")
    p.add_argument("--warmup", type=int, default=3, help="calls left out of the timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnx"),
        help="onnx: the checkpoint's ONNX export beside its PyTorch policy, same chunks and noise, "
        "interleaved (wam.bench_onnx; policy mode at the export's settings)",
    )
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="with --runtime onnx: the export to run (default: export the checkpoint into a temporary directory)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="with --runtime onnx: also onnxruntime's graph optimisation levels, 1 and 2 threads, and the int8 graph",
    )
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from wam.bench import bench
    from wam.checkpoint import load_checkpoint
    from wam.inference import InferenceConfig
    from wam.modes import MODES

    if args.mode not in MODES:
        raise ArgumentError(f"unknown mode {args.mode!r}; choose one of: {', '.join(MODES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    if args.runtime == "onnx":
        from wam.bench_onnx import bench_onnx

        if args.mode != "policy" or _inference_overrides(args):
            raise ArgumentError(
                "--runtime onnx benches policy mode at the export's own settings (wam export takes "
                "them); leave out --mode and the sampling flags"
            )
        result = bench_onnx(
            ckpt,
            export_dir=args.export,
            dataset=args.dataset,
            episodes=args.episodes,
            warmup=args.warmup,
            seed=args.seed,
            sweep=args.sweep,
        )
        return _print_bench(result, args.out)
    ic = InferenceConfig(cache=ckpt.model.cfg.attention != "full")
    ic = dataclasses.replace(ic, **_inference_overrides(args))
    if ic.warm_start and args.mode != "policy":
        raise ArgumentError("--warm-start applies to policy mode only")
    result = bench(
        ckpt,
        args.mode,
        ic,
        dataset=args.dataset,
        episodes=args.episodes,
        windows=args.windows,
        warmup=args.warmup,
        seed=args.seed,
    )
    return _print_bench(result, args.out)


def _print_bench(result: dict, out: str | None) -> int:
    print(json.dumps(result, indent=2))
    if out:
        from pathlib import Path

        from wam.atomic import write_json_atomic

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out), result)
    return 0


def _serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a checkpoint to robots over websockets, clients batched together",
        description="Serve a checkpoint as a policy over websockets (msgpack messages, see "
        "wam.protocol); concurrent clients share batched forward passes. Example: wam serve "
        "--checkpoint runs/mt10/checkpoint, then wam eval --server ws://127.0.0.1:8765 or "
        "wam.client.PolicyClient('ws://127.0.0.1:8765') on the robot.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (written by wam train)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; 0.0.0.0 for the network, with a --token)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument(
        "--token", default=None, help="token every client must send (default: $WAM_SERVE_TOKEN; unset: no check)"
    )
    p.add_argument("--max-batch", type=int, default=32, help="most environments in one forward pass")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="longest wait for more requests after the first of a batch"
    )
    p.add_argument("--max-message-bytes", type=int, default=8 * 2**20, help="larger messages close their connection")
    p.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="open connections at once; one more is told so and closed (default 64)",
    )
    p.add_argument(
        "--hello-timeout",
        type=float,
        default=10.0,
        help="seconds a new connection has to say hello before it is closed (default 10)",
    )
    p.add_argument(
        "--mode", default="policy", help="default acting mode (clients may ask for any of policy, joint, inverse)"
    )
    p.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="actions per chunk a client executes, told to clients (default: half the horizon)",
    )
    _add_plan_flags(p)
    _add_inference_flags(p)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    _add_runtime_flags(p, "--checkpoint is then an export directory (wam export), served without torch; ")
    p.set_defaults(func=_run_serve)


def _add_runtime_flags(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnx"),
        help=f"torch (default) or onnx: {note}see docs/deploy-onnx.md",
    )
    p.add_argument(
        "--onnx-threads",
        type=int,
        default=None,
        metavar="N",
        help="onnxruntime intra-op threads (default: one per physical core)",
    )
    p.add_argument(
        "--onnx-optimization",
        default="all",
        choices=("disabled", "basic", "extended", "all"),
        help="onnxruntime graph optimisation level (default all)",
    )
    p.add_argument("--int8", action="store_true", help="with --runtime onnx: the export's int8 policy graph")


def _onnx_policy(args: argparse.Namespace, path: str):
    """`--runtime onnx`: the export at `path` as an ONNXPolicy; torch-only settings are refused by name."""
    from wam.runtime import ONNXPolicy

    torch_only = [
        f
        for f, given in (
            ("--plan", args.plan != 1),
            ("--critic", args.critic is not None),
            ("--plan-score", args.plan_score != "imagined"),
            ("--plan-guidance", args.plan_guidance != 1),
        )
        if given
    ]
    flags = {kw.get("dest", f[2:].replace("-", "_")): f for f, kw, _ in _INFERENCE_FLAGS}
    torch_only += [flags[name] for name in _inference_overrides(args)]
    if torch_only:
        raise ArgumentError(
            f"{', '.join(torch_only)}: an export holds its sampling settings (wam export takes them); "
            f"with --runtime onnx they cannot change"
        )
    if args.mode not in (None, "policy"):
        raise ArgumentError(f"--mode {args.mode}: an export acts in policy mode only")
    device = getattr(args, "device", None) or "cpu"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    return ONNXPolicy(
        path,
        n_action_steps=args.n_action_steps,
        threads=args.onnx_threads,
        optimization=args.onnx_optimization,
        int8=args.int8,
        providers=providers,
    )


def _run_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    try:
        from wam.serve import TOKEN_ENV, run_server
    except ImportError as e:
        raise ArgumentError(f"wam serve needs the serve extra ({e}); pip install 'wam[serve]'") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if args.runtime == "onnx":  # (no torch imported)
        policy = _onnx_policy(args, args.checkpoint)
    else:
        import torch

        from wam.checkpoint import load_checkpoint
        from wam.policy import WAMPolicy

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        policy = WAMPolicy(
            load_checkpoint(args.checkpoint, device=device),
            mode=args.mode,
            n_action_steps=args.n_action_steps,
            device=device,
            plan=args.plan,
            critic=args.critic,
            plan_score=args.plan_score,
            plan_guidance=args.plan_guidance,
            **_inference_overrides(args),
        )
    try:
        run_server(
            policy,
            args.host,
            args.port,
            token=args.token or os.environ.get(TOKEN_ENV) or None,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_message_bytes=args.max_message_bytes,
            max_connections=args.max_connections,
            hello_timeout_s=args.hello_timeout,
        )
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise ArgumentError(f"cannot listen on {args.host}:{args.port} ({e})") from None
    return 0


_FINETUNE_FLAGS = tuple(f for f in _TRAIN_FLAGS if not f.startswith("tokenizer_"))  # no tokenizer stage


def _finetune(sub: argparse._SubParsersAction) -> None:
    from wam.config import finetune_config

    p = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint on a new dataset: LoRA, bottleneck adapters or every weight",
        description="Fine-tune a trained checkpoint on a LeRobot dataset, its base frozen and small "
        "adapters trained (lora: on each stream's QKV, attention output and MLP; adapter: "
        "a bottleneck after each stream's attention), or every weight (full). New tasks "
        "get new rows of the task table. Writes adapter/, checkpoint/ (merged, for every "
        "verb), log.jsonl and finetune.json. Example: wam finetune --checkpoint "
        "runs/mt10/checkpoint --dataset data/new --out runs/new --adapter lora",
    )
    p.add_argument("--checkpoint", default=None, help="the base checkpoint directory (on --resume, the run's own)")
    p.add_argument("--dataset", default=None, help="LeRobot dataset directory (on --resume, the run's own)")
    p.add_argument("--out", required=True, help="output directory: adapter/, checkpoint/, log.jsonl, finetune.json")
    p.add_argument("--adapter", default=None, help="lora (default), adapter (bottleneck) or full")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank, or the bottleneck width of adapters (default 8)")
    p.add_argument(
        "--alpha", type=float, default=None, help="LoRA scale numerator: updates scaled by alpha / rank (default 16)"
    )
    p.add_argument(
        "--streams", default=None, help="comma-separated streams that get adapters (default: context,video,action)"
    )
    p.add_argument(
        "--freeze-task-embedding",
        action="store_true",
        help="keep the task table frozen too (only when the dataset brings no new task)",
    )
    p.add_argument("--loss", action="append", metavar="KEY=VALUE", help="change a loss setting (repeatable)")
    p.add_argument("--val-fraction", type=float, default=None, help="episodes held out per task (default 0.05)")
    d = finetune_config("lora")
    for name in _FINETUNE_FLAGS:
        default = getattr(d, name)
        extra = " with adapters, 0.0001 for full" if name == "lr" else ""
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=None,
            help=f"(default {default}{extra}; on --resume, the run's own)",
        )
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start over, replacing the fine-tune in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wam.config import LossConfig, TrainConfig, finetune_config, from_dict
    from wam.finetune import finetune

    given = {k: getattr(args, k) for k in _FINETUNE_FLAGS if getattr(args, k) is not None}
    loss = _parse_settings(args.loss, LossConfig)
    tc = lc = None
    info = Path(args.out) / "finetune.json"
    try:
        if args.resume and info.is_file():  # the run's own settings, changed only where flags were given
            saved = json.loads(info.read_text())["settings"]
            tc = from_dict(TrainConfig, {**saved["train"], **given}) if given else None
            lc = from_dict(LossConfig, {**saved["loss"], **loss}) if loss else None
        else:
            tc, lc = finetune_config(args.adapter or "lora", **given), LossConfig(**loss)
    except (TypeError, ArgumentError) as e:
        raise ArgumentError(f"invalid training settings: {e}") from None
    streams = [s.strip() for s in args.streams.split(",") if s.strip()] if args.streams else None
    summary = finetune(
        args.checkpoint,
        args.dataset,
        args.out,
        adapter=args.adapter,
        rank=args.rank,
        alpha=args.alpha,
        streams=streams,
        train_task_embedding=False if args.freeze_task_embedding else None,
        tc=tc,
        lc=lc,
        val_fraction=0.05 if args.val_fraction is None else args.val_fraction,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if args.quiet:  # (otherwise printed before training)
        n, total = summary["trainable_parameters"], summary["total_parameters"]
        print(f"trainable parameters: {n:,} of {total:,} ({100 * n / total:.2f}%)")
    if summary["new_tasks"]:
        print(f"new tasks: {', '.join(summary['new_tasks'])}")
    if summary["adapter_dir"]:
        print(f"adapter: {summary['adapter_dir']}")
    print(f"checkpoint: {summary['checkpoint_dir']}")
    return 0


def _export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="the policy as ONNX graphs run by onnxruntime, without torch (wam.runtime)",
        description="Write a checkpoint's policy (frame encoder, observed-token pass and denoising "
        "steps at the checkpoint's default inference settings) as ONNX, with its "
        "normalisation statistics and a manifest; run it with wam.runtime.ONNXPolicy, "
        "wam serve --runtime onnx or wam bench --runtime onnx. Example: wam export "
        "checkpoints/wam-tiny-mt10 --out exports/wam-tiny-mt10",
    )
    p.add_argument("checkpoint", help="checkpoint directory (written by wam train)")
    p.add_argument("--out", required=True, help="export directory to write")
    _add_inference_flags(p, note="; the export holds fp32 sdpa sampling without Taylor or warm start")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 policy graph (policy.int8.onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip running the graphs against PyTorch once")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import dataclasses

    from wam.checkpoint import load_checkpoint
    from wam.export import OPSET, export_policy
    from wam.inference import InferenceConfig

    ckpt = load_checkpoint(args.checkpoint)
    ic = dataclasses.replace(InferenceConfig(cache=ckpt.model.cfg.attention != "full"), **_inference_overrides(args))
    manifest = export_policy(
        ckpt,
        args.out,
        inference=ic,
        int8=not args.no_int8,
        opset=args.opset or OPSET,
        overwrite=args.overwrite,
        check=not args.no_check,
        progress=True,
    )
    print(
        json.dumps(
            {
                k: manifest[k]
                for k in (
                    "model_hash",
                    "observation",
                    "action_horizon",
                    "inference",
                    "graphs",
                    *(("check",) if "check" in manifest else ()),
                )
            },
            indent=2,
        )
    )
    return 0


def _recipe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe",
        help="run a named training recipe (collection + training), resumable",
        description="A named recipe is a checkpoint's whole making: collection, tokenizer stage, WAM "
        "stage, every setting. `run` starts it, or continues it where it stopped; "
        "sittings.jsonl in the run directory records where each sitting began and ended.",
    )
    rs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    rs.add_parser("list", help="the recipes and what each makes").set_defaults(func=_run_recipe)
    show = rs.add_parser("show", help="every setting of a recipe, as JSON")
    show.add_argument("name")
    show.set_defaults(func=_run_recipe)
    st = rs.add_parser("status", help="where a recipe run stands, and each sitting's start and end")
    st.add_argument("out", help="the run directory")
    st.set_defaults(func=_run_recipe)
    run = rs.add_parser("run", help="run a recipe, or continue it where it stopped")
    run.add_argument("name")
    run.add_argument("--out", required=True, help="the run directory (data/, train/, recipe.json, sittings.jsonl)")
    run.add_argument(
        "--until-step",
        type=int,
        default=None,
        metavar="N",
        help="end this sitting after WAM step N (run again to continue; the schedule is the recipe's)",
    )
    run.add_argument("--workers", type=int, default=None, help="collection processes (the data does not depend on it)")
    run.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="a finished dataset collected with the recipe's collection settings (e.g. another recipe's "
        "run's data/), used instead of collecting it",
    )
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=_run_recipe)
    ship = rs.add_parser("ship", help="a finished run's checkpoint without its optimizer state, to share")
    ship.add_argument("out", help="the run directory")
    ship.add_argument("--to", required=True, metavar="DIR", help="where the checkpoint goes")
    ship.add_argument("--overwrite", action="store_true", help="replace what is at --to")
    ship.set_defaults(func=_run_recipe)


def _run_recipe(args: argparse.Namespace) -> int:
    import json

    from wam.recipe import RECIPES, get_recipe, run_recipe

    if args.action == "list":
        width = max(map(len, RECIPES))
        for name, r in RECIPES.items():
            print(f"{name:<{width}}  {r.summary}")
        return 0
    if args.action == "show":
        print(json.dumps(get_recipe(args.name).to_dict(), indent=2))
        return 0
    if args.action == "status":
        _print_recipe_status(args.out)
        return 0
    if args.action == "ship":
        from wam.recipe import ship

        dest = ship(args.out, args.to, overwrite=args.overwrite)
        print(f"wam recipe: {args.out}'s checkpoint -> {dest} (load it with --checkpoint {dest})")
        return 0
    import signal

    def stop(signum, frame):  # a supervisor's or `kill`'s SIGTERM ends the sitting as Ctrl-C does (logged)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    end = run_recipe(
        args.name,
        args.out,
        until_step=args.until_step,
        workers=args.workers,
        data=args.data,
        progress=not args.quiet,
    )
    where = "done" if end["stage"] == "done" else f"stopped in stage {end['stage']} at WAM step {end['step']}"
    print(f"wam recipe: {args.name} in {args.out}: {where}; checkpoint: {args.out}/train/checkpoint")
    return 0


def _print_recipe_status(out: str) -> None:
    from wam.recipe import status

    st = status(out)
    p = st["progress"]
    where = {"collect": "collecting", "train": "training", "done": "done"}[p["stage"]]
    tok = f", tokenizer stage at step {p['tokenizer_step']:,}" if "tokenizer_step" in p else ""
    print(f"{out}: recipe {st['recipe']}, {where}; last checkpoint at WAM step {p['step']:,} of {st['steps']:,}{tok}")
    if st["pace"] is not None and st["pace"]["hours_left"] is not None:
        pace = st["pace"]
        print(
            f"  about {pace['hours_left']:.1f} h of WAM training left at sitting {pace['sitting']}'s pace "
            f"({pace['steps_per_hour']:,.0f} steps/h, loading included)"
        )

    def at(event: dict) -> str:
        tok = f" (tokenizer {event['tokenizer_step']:,})" if "tokenizer_step" in event else ""
        return f"{event['stage']} {event['step']:,}{tok}"

    for i, s in enumerate(st["sittings"], 1):
        start, end = s["start"], s["end"]
        if end is None:
            print(f"  sitting {i}: {start['time']} from {at(start)}, no end recorded (running, or killed)")
        else:
            how = f", stopped by {end['interrupted']}" if end.get("interrupted") else ""
            print(f"  sitting {i}: {start['time']} -> {end['time']}, {at(start)} -> {at(end)}{how}")


VERBS = [
    _presets,
    _quickstart,
    _dataset,
    _collect,
    _train,
    _finetune,
    _critic,
    _imagine,
    _eval,
    _serve,
    _bench,
    _export,
    _recipe,
]


# ---- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wam", description="World action models: train, evaluate, serve.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    for verb_parser in sub.choices.values():  # each verb's parser, for `in_flags`
        verb_parser.set_defaults(verb_parser=verb_parser)
    return parser


# the library's names of arguments whose flag's destination is named otherwise
ARGUMENT_DESTS = {"model_changes": "model"}


def in_flags(message: str, parser: argparse.ArgumentParser | None) -> str:
    """A library message with its arguments, written in backquotes as in Python (`resume=True`, `dataset=PATH`,
    `batch_size=64`, `tokenizer_from`), named by the verb's flags instead (--resume, --dataset PATH, --batch-size 64,
    --tokenizer-from). Backquoted text that names no flag of the verb stays as it is."""
    if parser is None:
        return message
    actions = {a.dest: a for a in parser._actions if a.option_strings}

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(3)
        action = actions.get(ARGUMENT_DESTS.get(name, name))
        if action is None:
            return m.group(0)
        long = next(
            (o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")),
            action.option_strings[0],
        )
        if value is None or value == "True":
            return long
        if value == "False":
            negative = next((o for o in action.option_strings if o.startswith("--no-")), None)
            return negative or f"no {long}"
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{long} {value}"

    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)(=([^`]+))?`", flag, message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # (wam train --nproc relaunches it under torchrun)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except WamError as e:
        print(f"wam {args.verb}: error: {in_flags(str(e), getattr(args, 'verb_parser', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wam {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
