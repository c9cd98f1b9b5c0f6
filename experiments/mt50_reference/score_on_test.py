"""A shipped checkpoint's MT50 score on the test seeds of the published benchmark, in one command.

    python experiments/mt50_reference/score_on_test.py --checkpoint checkpoints/wam-tiny-mt50-v2 \
        --flags-from experiments/mt50_reference/mt50_v2_dev_tuning.json \
        --out runs/mt50-v2-test --record experiments/mt50_reference/mt50_v2_test_eval.json

Runs, each skipped when its eval_info.json is already in `--out` (an interrupted scoring continues):
1. `wam eval --seed test --protocol lerobot`, every MT50 task, 10 episodes each (500 episodes), the settings the
   checkpoint was chosen with on the development seeds (`--flags-from`, the `chosen` setting of
   `tune_on_dev.py`'s record for this checkpoint; or `--flags`; default: none, i.e. wam's defaults);
2. the same with the camera blacked out (`--blind`), 3 episodes per task: what the camera is worth;
3. the scripted expert's results on the same seeds (`expert_test_400.json`, LeRobot's 400 steps) merged in.
The record (the seeing evaluation with the expert's rates; the blind one beside it as `<record>` with `_blind`)
is what `mt50_table.py` prints the tables from. The test seeds are for this one evaluation per checkpoint: choose
nothing on them (`tune_on_dev.py` chooses on the development seeds).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_eval(checkpoint: str, out: Path, tasks: str, episodes: int, workers: int, flags: list[str]) -> dict:
    if not (out / "eval_info.json").is_file():
        cmd = [sys.executable, "-m", "wam.cli", "eval", "--checkpoint", checkpoint, "--tasks", tasks]
        cmd += ["--episodes", str(episodes), "--seed", "test", "--protocol", "lerobot", "--workers", str(workers)]
        cmd += ["--no-expert", "--videos", "1", "--resume", "--out", str(out), *flags]
        print("$ wam", shlex.join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((out / "eval_info.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True, help="a directory for the two evaluations (seeing/, blind/)")
    ap.add_argument("--record", required=True, help="the JSON to write (and <record>_blind.json beside it)")
    ap.add_argument("--tasks", default="mt50", help="the tasks (default mt50; fewer only to try the command)")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10: 500 in all)")
    ap.add_argument("--blind-episodes", type=int, default=3, help="episodes per task with the camera blacked out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--flags", default="", help="inference settings chosen on the dev seeds, e.g. '--steps 4'")
    ap.add_argument("--flags-from", default=None, metavar="RECORD", help="tune_on_dev.py's record: its chosen flags")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from expert_on_seeds import merge

    flags = shlex.split(args.flags)
    if args.flags_from is not None:
        if flags:
            raise SystemExit("give --flags or --flags-from, not both")
        tuning = json.loads(Path(args.flags_from).read_text())
        if Path(tuning["checkpoint"]).resolve() != Path(args.checkpoint).resolve():
            raise SystemExit(f"{args.flags_from} tuned {tuning['checkpoint']}, not {args.checkpoint}")
        flags = tuning["runs"][tuning["chosen"]]["flags"]
        print(f"the setting chosen on the development seeds: {tuning['chosen']} ({shlex.join(flags) or 'defaults'})")
    seeing = run_eval(args.checkpoint, Path(args.out) / "seeing", args.tasks, args.episodes, args.workers, flags)
    blind = run_eval(
        args.checkpoint, Path(args.out) / "blind", args.tasks, args.blind_episodes, args.workers, [*flags, "--blind"]
    )
    expert = json.loads((HERE / "expert_test_400.json").read_text())
    record = Path(args.record)
    record.write_text(json.dumps(merge(expert, seeing), indent=2))
    blind_record = record.with_name(record.stem + "_blind.json")
    blind_record.write_text(json.dumps(blind, indent=2))
    subprocess.run(
        [sys.executable, str(HERE / "mt50_table.py"), str(record), "--blind", str(blind_record), "--tasks"], check=True
    )


if __name__ == "__main__":
    main()
