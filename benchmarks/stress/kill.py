"""Kill it twenty times: SIGKILL at random moments to `wam train`, `wam finetune` and `wam collect`, then check
that what is on disk loads and that the run continues.

    python benchmarks/stress/kill.py --kills 20 --out benchmarks/stress/kill.json

Tiny settings (the dot world at 16x16, a 1-block model of width 32, a checkpoint every 2 steps) make every
process short, so most of its life is spent starting, saving and loading: where a kill does damage. Each verb:

- an uninterrupted run first: its timing bounds the kill moments, its result is the reference;
- then a chain: start, SIGKILL (the whole process group, as a job scheduler does) at a uniform random moment
  between a second before the uninterrupted run first wrote its checkpoint (or dataset) and its end (for a
  resumed run: the end of what it has left; the window shrinks when a run finishes before its kill, as
  happens when the machine's load drops), check what is on disk, continue (train/finetune: --resume when a
  checkpoint exists, else a fresh start; collect: the same command again with --overwrite), until --kills
  kills were made; a process that finishes before its kill starts the chain over;
- after each kill: the checkpoint loads with its train state (train: run.json too; finetune: the adapter
  onto its base, finetune.json), or the dataset is absent or passes `wam dataset check` and loads;
  a checkpoint seen after an earlier kill that is gone now is lost, one that no longer loads is corrupt;
- a final run to the end: its weights (or dataset) must equal the uninterrupted run's.

Counted per verb: kills, resumes (continuations started) and clean resumes (those that did not fail on their
own), lost and corrupt files (target 0), leftover temporary directories, and whether the final result equals
the uninterrupted one. JSON to --out; exit status 1 when a file was lost or corrupt or a resume failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_MODEL = [
    "--preset",
    "wam-tiny",
    "--model",
    "width=32",
    "--model",
    "depth=1",
    "--model",
    "heads=2",
    "--model",
    "image_size=16",
    "--model",
    "latent_channels=4",
    "--model",
    "tokenizer_width=8",
    "--model",
    "future_frames=1",
    "--model",
    "future_stride=1",
    "--model",
    "action_horizon=4",
]


def wam(*args: str) -> list[str]:
    return [sys.executable, "-m", "wam.cli", *args]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    f = open(log, "ab")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run_to_end(cmd: list[str], log: Path, timeout: float = 600, watch: Path | None = None) -> tuple[float, float]:
    """(duration, when `watch` first appeared) of a run that must succeed."""
    t0 = time.time()
    p = start(cmd, log)
    appeared = None
    while p.poll() is None and time.time() - t0 < timeout:
        if appeared is None and watch is not None and watch.exists():
            appeared = time.time() - t0
        time.sleep(0.02)
    if p.wait(timeout) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}); see {log}")
    duration = time.time() - t0
    return duration, appeared if appeared is not None else duration


def window(first_write: float, duration: float) -> tuple[float, float]:
    """Kill moments: from a second before the uninterrupted run first wrote its output (a process spends its
    first seconds importing and loading, where a kill can hurt nothing) to its end."""
    return max(0.3, first_write - 1.0), max(first_write, duration)


def weights_hash(ckpt: Path) -> str:
    return hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()[:16]


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != name and name in p.name)


# ---- what must hold on disk after a kill ---------------------------------------------------------------


def check_run(out: Path, kind: str, base: Path | None) -> tuple[str, str]:
    """('none' | 'ok' | 'corrupt', detail) for the checkpoint of a train or finetune run directory."""
    from wam.adapters import load_adapter
    from wam.atomic import set_aside
    from wam.checkpoint import load_checkpoint

    ck = out / "checkpoint"
    if not ck.exists() and set_aside(ck) is None:
        return "none", ""
    try:
        c = load_checkpoint(ck, with_train_state=True)
        if c.train_state is None:
            return "corrupt", "no train_state/state.pt"
        step = int(c.train_state["step"])
        if kind == "train":
            json.loads((out / "run.json").read_text())
        else:
            json.loads((out / "finetune.json").read_text())
            if (out / "adapter").exists() or set_aside(out / "adapter") is not None:
                load_adapter(load_checkpoint(base).model, set_aside(out / "adapter") or out / "adapter")
        for line in (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").exists() else []:
            json.loads(line)
        return "ok", f"step {step}"
    except Exception as e:  # noqa: BLE001 (whatever fails to load is what this benchmark looks for)
        return "corrupt", f"{type(e).__name__}: {e}"[:300]


def check_dataset_dir(out: Path) -> tuple[str, str]:
    from wam.data import LeRobotDataset
    from wam.data.check import check_dataset

    if not out.exists():
        return "none", ""
    try:
        report = check_dataset(out)
        if not report.ok:
            return "corrupt", "; ".join(report.problems[:3])
        ds = LeRobotDataset(out)
        return "ok", f"{ds.num_episodes} episodes"
    except Exception as e:  # noqa: BLE001
        return "corrupt", f"{type(e).__name__}: {e}"[:300]


# ---- one verb under repeated kills -------------------------------------------------------------------


def kill_chain(
    name: str,
    first: list[str],
    resume: list[str] | None,
    again: list[str],
    check,
    out: Path,
    kills: int,
    window: tuple[float, float],
    rng: random.Random,
    logs: Path,
    deadline: float,
    total_steps: int | None = None,
) -> dict:
    """SIGKILL `kills` times; after each, `check()` and continue (resume when the check found a checkpoint).
    A resumed run has less left to do: its kill moment is drawn over the part of the window it still needs."""
    res = {
        "kills": 0,
        "resumes": 0,
        "clean_resumes": 0,
        "restarts": 0,
        "finished_before_kill": 0,
        "lost": 0,
        "corrupt": 0,
        "failed_resumes": 0,
        "details": [],
    }
    cmd, seen, resumed, done_steps = first, False, False, 0
    pace = 1.0  # how much slower than the uninterrupted run processes are now (the machine's load changes)
    i = 0
    while res["kills"] < kills and time.time() < deadline:
        i += 1
        log = logs / f"{name}-{i:03d}.log"
        lo, hi = window
        if total_steps and done_steps:  # (training: the steps already done are not run again, and a resumed
            # run starts sooner: no tokenizer stage)
            hi = lo + 1.0 + (hi - lo - 1.0) * max(0.0, 1 - done_steps / total_steps)
            lo = max(0.3, 0.6 * lo)
        lo, hi = lo * pace, max(lo, hi) * pace
        t = rng.uniform(lo, hi)
        t0 = time.time()
        p = start(cmd, log)
        try:
            rc = p.wait(t)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
        if rc == 0:  # it finished before its kill: the expected end was too late, aim earlier from now on
            pace = max(0.2, min(5.0, pace * 0.8 * (time.time() - t0) / hi))
        if rc is None:
            res["kills"] += 1
            if resumed:
                res["clean_resumes"] += 1  # (it ran until killed without failing)
        elif rc == 0:
            res["finished_before_kill"] += 1
            if resumed:
                res["clean_resumes"] += 1
        else:
            text = log.read_text(errors="replace")[-600:]
            if resumed:
                res["failed_resumes"] += 1
            res["details"].append(f"run {i} exited {rc}: {text}")
        state, detail = check()
        if state == "corrupt":
            res["corrupt"] += 1
            res["details"].append(f"after kill {res['kills']} (at {t:.2f} s): corrupt: {detail}")
        elif state == "none" and seen:
            res["lost"] += 1
            res["details"].append(f"after kill {res['kills']} (at {t:.2f} s): what was there before is gone")
        seen = seen or state == "ok"
        done_steps = int(detail.split()[-1]) if state == "ok" and detail.startswith("step") else 0
        if rc == 0:  # finished: start the chain over
            shutil.rmtree(out, ignore_errors=True)
            cmd, seen, resumed, done_steps = first, False, False, 0
            res["restarts"] += 1
        elif state == "ok" and resume is not None:
            cmd, resumed = resume, True
            res["resumes"] += 1
        else:
            cmd, resumed = again, resume is None  # (collection: running it again is its continuation)
            res["resumes"] += int(resume is None)
    res["continue_with"] = "resume" if cmd is resume else "again" if cmd is again else "first"
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs per verb")
    ap.add_argument("--verbs", default="train,finetune,collect")
    ap.add_argument("--steps", type=int, default=200, help="training / fine-tuning steps of each run")
    ap.add_argument("--max-seconds", type=float, default=600, help="time limit per verb (kills stop there)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="wam-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    verbs = [v.strip() for v in args.verbs.split(",") if v.strip()]
    t_all = time.time()
    result: dict = {
        "command": "python benchmarks/stress/kill.py " + " ".join(sys.argv[1:]),
        "kills_per_verb": args.kills,
        "seed": args.seed,
        "verbs": {},
    }

    data = work / "dot"

    def collect_cmd(out):
        return wam(
            "collect",
            "dot",
            "--episodes",
            "12",
            "--image-size",
            "16",
            "--workers",
            "1",
            "--out",
            str(out),
            "--overwrite",
        )

    run_to_end(collect_cmd(data), logs / "data.log")

    def train_args(out):
        return wam(
            "train",
            "--dataset",
            str(data),
            "--out",
            str(out),
            *TINY_MODEL,
            "--steps",
            str(args.steps),
            "--batch-size",
            "4",
            "--tokenizer-steps",
            "4",
            "--warmup-steps",
            "2",
            "--checkpoint-every",
            "2",
            "--val-every",
            "0",
            "--log-every",
            "2",
            "--quiet",
        )

    base = work / "base"
    run_to_end(train_args(base), logs / "base.log")

    for verb in verbs:
        deadline = time.time() + args.max_seconds
        t0 = time.time()
        if verb == "train":
            ref, out = work / "train-ref", work / "train"
            duration, first_write = run_to_end(train_args(ref), logs / "train-ref.log", watch=ref / "checkpoint")
            first = train_args(out)
            resume = wam("train", "--dataset", str(data), "--out", str(out), "--resume", "--quiet")
            r = kill_chain(
                "train",
                first,
                resume,
                first,
                lambda out=out: check_run(out, "train", None),
                out,
                args.kills,
                window(first_write, duration),
                rng,
                logs,
                deadline,
                total_steps=args.steps,
            )
            final_resume = check_run(out, "train", None)[0] == "ok"
            run_to_end(resume if final_resume else first, logs / "train-final.log")
            same = weights_hash(out / "checkpoint") == weights_hash(ref / "checkpoint")
            r["final_equals_uninterrupted"] = same
            r["leftover_temporaries"] = leftovers(out, "checkpoint")
        elif verb == "finetune":
            ref, out = work / "ft-ref", work / "ft"

            def ft(o):
                return wam(
                    "finetune",
                    "--checkpoint",
                    str(base / "checkpoint"),
                    "--dataset",
                    str(data),
                    "--out",
                    str(o),
                    "--adapter",
                    "lora",
                    "--rank",
                    "2",
                    "--steps",
                    str(args.steps),
                    "--checkpoint-every",
                    "2",
                    "--val-every",
                    "0",
                    "--log-every",
                    "2",
                    "--quiet",
                )

            duration, first_write = run_to_end(ft(ref), logs / "ft-ref.log", watch=ref / "checkpoint")
            resume = wam("finetune", "--out", str(out), "--resume", "--quiet")
            r = kill_chain(
                "finetune",
                ft(out),
                resume,
                [*ft(out), "--overwrite"],
                lambda out=out: check_run(out, "finetune", base / "checkpoint"),
                out,
                args.kills,
                window(first_write, duration),
                rng,
                logs,
                deadline,
                total_steps=args.steps,
            )
            final_resume = check_run(out, "finetune", base / "checkpoint")[0] == "ok"
            run_to_end(resume if final_resume else ft(out), logs / "ft-final.log")
            r["final_equals_uninterrupted"] = weights_hash(out / "checkpoint") == weights_hash(ref / "checkpoint")
            r["leftover_temporaries"] = leftovers(out, "checkpoint") + leftovers(out, "adapter")
        elif verb == "collect":
            ref, out = work / "col-ref", work / "col"

            def col(o):
                return wam(
                    "collect",
                    "dot",
                    "--episodes",
                    "60",
                    "--image-size",
                    "32",
                    "--workers",
                    "1",
                    "--out",
                    str(o),
                    "--overwrite",
                )

            duration, first_write = run_to_end(col(ref), logs / "col-ref.log", watch=ref)
            r = kill_chain(
                "collect",
                col(out),
                None,
                col(out),
                lambda out=out: check_dataset_dir(out),
                out,
                args.kills,
                window(first_write, duration),
                rng,
                logs,
                deadline,
            )
            final_resume = True
            run_to_end(col(out), logs / "col-final.log")
            from wam.data.check import describe

            a, b = describe(out), describe(ref)
            same_meta = {k: v for k, v in a.items() if k != "root"} == {k: v for k, v in b.items() if k != "root"}
            data_same = all(
                (out / f.relative_to(ref)).read_bytes() == f.read_bytes() for f in sorted(ref.rglob("*.parquet"))
            )
            r["final_equals_uninterrupted"] = bool(same_meta and data_same)
            r["leftover_temporaries"] = sorted(p.name for p in work.iterdir() if p.name.startswith(".col."))
        else:
            raise SystemExit(f"unknown verb {verb!r}")
        if final_resume:  # the last continuation (counted in resumes when chosen), run to its end (run_to_end
            r["clean_resumes"] += 1  # raises if it fails)
        r.pop("continue_with", None)
        r["wall_s"] = round(time.time() - t0, 1)
        r["kill_window_s"] = [round(x, 2) for x in window(first_write, duration)]
        r["uninterrupted_s"], r["first_write_s"] = round(duration, 2), round(first_write, 2)
        r["details"] = r["details"][:10]
        result["verbs"][verb] = r
        print(f"{verb}: {json.dumps({k: v for k, v in r.items() if k != 'details'})}", flush=True)

    totals = {
        k: sum(v[k] for v in result["verbs"].values())
        for k in ("kills", "resumes", "clean_resumes", "failed_resumes", "lost", "corrupt")
    }
    result["totals"] = totals
    result["wall_s"] = round(time.time() - t_all, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        from wam.atomic import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = (
        totals["lost"]
        or totals["corrupt"]
        or totals["failed_resumes"]
        or not all(v.get("final_equals_uninterrupted") for v in result["verbs"].values())
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
