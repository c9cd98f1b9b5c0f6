"""`wam <verb>`: each verb parses its arguments and calls one function of the library.

    wam presets                              the model presets with their sizes
    wam quickstart                           the main job on the embedded default
    wam dataset info|check PATH              inspect or validate a LeRobot dataset
    wam collect ENV --tasks T --episodes N   scripted-expert demonstrations -> a LeRobot dataset

Errors that come from the user's input (a bad path, a bad dataset, a bad setting) are printed as one
plain message and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


class UserError(Exception):
    """A problem with the user's input: printed without a traceback."""


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
        rows.append({"preset": name, "params_M": round(n / 1e6, 2), "tokens": cfg.tokens, "width": cfg.width,
                     "depth": cfg.depth, "image_size": cfg.image_size})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'preset':<10} {'params':>8} {'tokens':>7} {'width':>6} {'depth':>6} {'image':>6}")
        for r in rows:
            print(f"{r['preset']:<10} {r['params_M']:>7.2f}M {r['tokens']:>7} {r['width']:>6} {r['depth']:>6} "
                  f"{r['image_size']:>6}")
    return 0


def _quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the main job on the embedded default (see README)")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args: argparse.Namespace) -> int:
    from wam.quickstart import quickstart

    quickstart(out=args.out, seed=args.seed)
    return 0


VERBS = [_presets, _quickstart]


# ---- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wam", description="World action models: train, evaluate, serve.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"wam {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wam {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
