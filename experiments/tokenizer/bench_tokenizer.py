"""Which frame tokenizer? Candidate autoencoders trained on the same frames for the same steps, measured by how
well they reconstruct held-out episodes (the ceiling of every predicted frame) and what they cost.

    python experiments/tokenizer/bench_tokenizer.py --dataset data/mt50 --tasks mt10 \
        --out experiments/tokenizer/tokenizer.json
    python experiments/tokenizer/bench_tokenizer.py --table experiments/tokenizer/tokenizer.json

Training frames: every --stride-th frame of each task's episodes before the last --held-out ones (the same
held-out episodes as `wam train`'s default validation split of 50 demonstrations per task); test frames:
every frame of those held-out episodes. A candidate is `NAME=WIDTH:LATENT_CHANNELS:STEPS[:DOWNSAMPLE[:DETAIL]]`
(downsampling 8 by default: 96 px -> 12 x 12 latent cells; DETAIL: the detail weight of the loss, 0 by default,
see `wam.tokenizer.ConvAutoencoder.loss`); `s16` is the architecture and loss of checkpoints/wam-tiny-mt50's
tokenizer. Besides PSNR over whole frames, "detail PSNR" is measured on each frame's 2% of pixels that differ
most from their neighbourhood: small objects and goal markers, which a blurry reconstruction loses first while
whole-frame PSNR barely moves. The shipped tokenizer itself is measured on the same test frames beside them
(`--reference`). Costs: parameters, training seconds per step, and encode + decode milliseconds per frame
(batch 64), at --threads threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CANDIDATES = "s16=16:8:600,det=16:8:600:8:4,c16det=16:16:600:8:4,c16det-3k=16:16:3000:8:4"


def parse_candidates(text: str) -> list[tuple[str, int, int, int, int, float]]:
    """'w32=32:8:2000' -> (name, width, latent channels, steps, downsample 8, detail weight 0); a fourth number
    is the downsampling, a fifth the detail weight of the loss (`ConvAutoencoder.loss`)."""
    out = []
    for item in text.split(","):
        name, _, spec = item.partition("=")
        try:
            values = spec.split(":")
            if len(values) not in (3, 4, 5):
                raise ValueError
            width, channels, steps = (int(v) for v in values[:3])
            downsample = int(values[3]) if len(values) > 3 else 8
            detail = float(values[4]) if len(values) > 4 else 0.0
        except ValueError:
            raise SystemExit(
                f"bad candidate {item!r}; write NAME=WIDTH:LATENT_CHANNELS:STEPS[:DOWNSAMPLE[:DETAIL]], "
                f"e.g. w32=32:8:2000"
            ) from None
        out.append((name, width, channels, steps, downsample, detail))
    return out


def detail_mask(real, share: float = 0.02):
    """(N, 3, H, W) -> (N, 1, H, W) bool: each frame's `share` of pixels that differ most from their 7 x 7
    neighbourhood (`wam.tokenizer.detail_map`, uncapped: small objects, goal markers, edges)."""
    from wam.tokenizer import detail_map

    contrast = detail_map(real, cap=float("inf"))
    k = max(1, int(share * contrast[0].numel()))
    cut = contrast.flatten(1).topk(k, dim=1).values[:, -1]
    return contrast >= cut[:, None, None, None]


def measure(tok, test, batch: int = 64) -> dict:
    """Reconstruction PSNR / SSIM over the test frames, PSNR on each frame's 2% most detailed pixels, and
    encode + decode ms per frame."""
    import torch

    from wam.stats import psnr, ssim, to_unit
    from wam.tokenizer import to_model_frames

    ps, ss, detail, secs = [], [], [], 0.0
    with torch.no_grad():
        for i in range(0, len(test), batch):
            x = to_model_frames(test[i : i + batch])[:, None]
            t0 = time.perf_counter()
            rec = tok.decode(tok.encode(x))
            secs += time.perf_counter() - t0
            rec, real = to_unit(rec[:, 0]), to_unit(x[:, 0])  # [0, 1], 8-bit, as `wam eval --world-model`
            ps.append(psnr(rec, real))
            ss.append(ssim(rec, real))
            m = detail_mask(real).expand_as(real)
            detail.append(((rec - real).pow(2) * m).flatten(1).sum(1) / m.flatten(1).sum(1))
    detail_mse = torch.cat(detail).clamp_min(1e-10)
    return {
        "psnr": float(torch.cat(ps).mean()),
        "ssim": float(torch.cat(ss).mean()),
        "detail_psnr": float((10 * torch.log10(1 / detail_mse)).mean()),
        "ms_per_frame": 1000 * secs / len(test),
    }


def montage(toks: dict, test, path: Path, n: int = 6) -> None:
    """A PNG: n held-out frames (top row), then each tokenizer's reconstruction of them, one row each."""
    import numpy as np
    import torch
    from PIL import Image

    from wam.tokenizer import to_model_frames

    frames = test[np.linspace(0, len(test) - 1, n).astype(int)]
    rows = [np.concatenate(list(frames), 1)]
    with torch.no_grad():
        for tok in toks.values():
            rec = tok.decode(tok.encode(to_model_frames(frames)[:, None]))[:, 0]
            rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            rows.append(np.concatenate(list(rec), 1))
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="data/mt50")
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--held-out", type=int, default=3, help="the last N episodes of every task are the test set")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--stride", type=int, default=4, help="every Nth frame of the training episodes")
    p.add_argument(
        "--candidates",
        default=CANDIDATES,
        help="NAME=WIDTH:LATENT_CHANNELS:STEPS[:DOWNSAMPLE[:DETAIL]], comma-separated",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--reference",
        default="checkpoints/wam-tiny-mt50",
        help="a checkpoint whose tokenizer is measured beside the candidates ('' for none)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="train under bf16 autocast (fast only on CPUs with AVX-512 bf16 or AMX, and on GPUs)",
    )
    p.add_argument(
        "--save",
        default="runs/tokenizers",
        help="each candidate's weights go to "
        "SAVE/NAME/tokenizer.safetensors (so `wam train --tokenizer-from SAVE/NAME` takes it)",
    )
    p.add_argument("--out", default="experiments/tokenizer/tokenizer.json")
    p.add_argument("--table", default=None, metavar="JSON")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from wam.episodes import load_episodes
    from wam.inference.precision import cpu_description
    from wam.tokenizer import ConvAutoencoder, train_tokenizer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()  # the split: every task's episodes but its last --held-out train, those test
    eps = load_episodes(
        args.dataset, image_size=args.image_size, tasks=tuple(args.tasks.split(",")), lazy_frames=True
    ).episodes
    by_task: dict[int, list[dict]] = {}
    for e in eps:
        by_task.setdefault(e["task_index"], []).append(e)
    train_eps = [e for es in by_task.values() for e in es[: len(es) - args.held_out]]
    test_eps = [e for es in by_task.values() for e in es[len(es) - args.held_out :]]
    train = np.concatenate([e["frames"]()[:: args.stride] for e in train_eps])
    test = np.concatenate([e["frames"]() for e in test_eps])
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update(
        {
            "dataset": args.dataset,
            "tasks": args.tasks,
            "image_size": args.image_size,
            "train_episodes": len(train_eps),
            "train_frames": int(len(train)),
            "test_episodes": len(test_eps),
            "test_frames": int(len(test)),
            "batch_size": args.batch_size,
            "threads": args.threads,
            "bf16": args.bf16,
            "cpu": cpu_description(),
            "load_s": round(time.perf_counter() - t0, 1),
        }
    )
    rows = result.setdefault("candidates", {})
    print(
        f"{len(train)} training frames from {len(train_eps)} episodes, {len(test)} test frames from "
        f"{len(test_eps)} held-out episodes",
        flush=True,
    )
    toks = {}
    if args.reference:
        from wam.checkpoint import load_checkpoint

        ck = load_checkpoint(args.reference)
        ref = toks["shipped"] = ck.tokenizer.eval()
        cfg = ck.model.cfg
        result["reference"] = {
            "checkpoint": args.reference,
            **measure(ref, test),
            "params": sum(p.numel() for p in ref.parameters()),
            "width": cfg.tokenizer_width,
            "latent_channels": cfg.latent_channels,
            "downsample": cfg.tokenizer_downsample,
        }
        print(f"[reference] {result['reference']['psnr']:.2f} dB", flush=True)
    Path(args.save).mkdir(parents=True, exist_ok=True)
    for name, width, channels, steps, downsample, detail in parse_candidates(args.candidates):
        weights = Path(args.save) / name / "tokenizer.safetensors"
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        tok = ConvAutoencoder(3, channels, downsample, width)
        if (
            name in rows
            and weights.is_file()
            and (rows[name].get("steps"), rows[name].get("detail_weight", 0.0), rows[name].get("downsample", 8))
            == (steps, detail, downsample)
        ):
            tok.load_state_dict(load_file(weights))  # measured before: re-measured, not retrained
            train_s = rows[name]["train_s_per_step"] * steps
        else:
            t1 = time.perf_counter()
            losses = train_tokenizer(
                tok,
                train,
                steps=steps,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=0,
                autocast=args.bf16,
                detail_weight=detail,
            )
            train_s = time.perf_counter() - t1
            tmp = weights.with_suffix(".tmp")
            save_file(tok.state_dict(), tmp)
            tmp.replace(weights)
            rows.setdefault(name, {})["final_loss"] = losses[-1]
        toks[name] = tok.eval()
        rows[name] = {
            **rows.get(name, {}),
            "width": width,
            "latent_channels": channels,
            "downsample": downsample,
            "detail_weight": detail,
            "latent_numbers": channels * (args.image_size // downsample) ** 2,
            "steps": steps,
            "params": sum(p.numel() for p in tok.parameters()),
            "train_s_per_step": train_s / steps,
            **measure(tok, test),
            "weights": str(weights),
        }
        print(
            f"[{name}] {rows[name]['psnr']:.2f} dB (detail {rows[name]['detail_psnr']:.2f}), SSIM "
            f"{rows[name]['ssim']:.3f}, "
            f"{rows[name]['train_s_per_step']:.3f} s/step",
            flush=True,
        )
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    montage(toks, test, Path(args.save) / "montage.png")
    print(table(result))
    print(
        f"held-out frames and their reconstructions (top row: real; then {', '.join(toks)}): "
        f"{Path(args.save) / 'montage.png'}"
    )
    return 0


def table(result: dict) -> str:
    lines = [
        "| tokenizer | width | latent (channels x cells) | detail weight | steps | parameters | held-out PSNR / "
        "SSIM | detail PSNR | train s/step | encode+decode ms/frame |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = result.get("reference")
    if ref:
        cells = result["image_size"] // ref.get("downsample", 8)
        lines.append(
            f"| shipped ({ref['checkpoint']}) | {ref.get('width', '')} | {ref.get('latent_channels', '')} x "
            f"{cells}x{cells} | 0 | | {ref['params']:,} | {ref['psnr']:.2f} / "
            f"{ref['ssim']:.3f} | {ref.get('detail_psnr', float('nan')):.2f} | | {ref['ms_per_frame']:.2f} |"
        )
    for name, r in result["candidates"].items():
        cells = result["image_size"] // r.get("downsample", 8)
        lines.append(
            f"| {name} | {r['width']} | {r['latent_channels']} x {cells}x{cells} | {r['detail_weight']:g} | "
            f"{r['steps']:,} | "
            f"{r['params']:,} | {r['psnr']:.2f} / {r['ssim']:.3f} | {r['detail_psnr']:.2f} | "
            f"{r['train_s_per_step']:.3f} | {r['ms_per_frame']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
