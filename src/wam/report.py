"""Evaluation report: one self-contained HTML page of tables, figures and rollout videos.

    import json
    from pathlib import Path
    from wam.report import build_report

    info = json.loads(Path("runs/eval/eval_info.json").read_text())
    page = build_report("runs/eval", info, log_path="runs/mt10/log.jsonl")
    # open runs/eval/report.html in a browser

Every section is optional and appears only when its input is given: the closed-loop success table
and chart (`eval_info`), the rollout videos (`eval_info["per_task"][i]["video_paths"]`), the
training curves (`log_path`, the JSON-lines log of `wam train`) and the world-model metrics and frame
strips (`world_model`). The page has inline CSS and no scripts; images and videos are referenced by
paths relative to `out`, so the directory can be moved or archived as a whole. Figures are PNGs
under `out/figures/`, drawn with matplotlib when it is installed (through `matplotlib.figure.Figure`,
so the caller's pyplot state and backend are left alone); without it the page says where they would be.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
import urllib.parse
from datetime import datetime
from pathlib import Path

MODES = ("policy", "forward", "inverse", "video", "joint")
WM_METHODS = (
    ("forward", "forward"),
    ("video", "video"),
    ("copy_last_frame", "copy last frame"),
    ("tokenizer_reconstruction", "tokenizer (ceiling)"),
)
NO_FIGURES = '<p class="note">install wam[report] for figures</p>'
STRIP_CAPTION = "rows: real, forward, video; columns: history, then future frames"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
header { background: #24313f; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .meta { color: #b8c4d0; font-size: 13px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 14px; }
.tile { background: #33475b; border-radius: 6px; padding: 8px 14px; min-width: 90px; }
.tile b { display: block; font-size: 22px; } .tile span { font-size: 12px; color: #b8c4d0; }
main { padding: 8px 32px 32px; max-width: 1100px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; font-size: 19px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; background: #fff; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e6e6; text-align: left; }
th { background: #f0f2f4; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; border-top: 2px solid #999; }
img.fig { max-width: 100%; } .pix { image-rendering: pixelated; image-rendering: crisp-edges; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0 0 12px; } figcaption { font-size: 12px; color: #555; margin-top: 2px; }
video.pix { width: 192px; height: 192px; background: #000; }
.ok { color: #1a7f37; } .fail { color: #c62828; } .note { color: #777; font-style: italic; }
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x, spec: str = ".1f") -> str:
    return format(x, spec) if _is_num(x) else "–"


def _is_ci(ci) -> bool:
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_num(v) for v in ci)


def _pct_ci(pc, ci) -> str:
    """`90.0 [69.9, 97.2]`: a success rate in % with its 95% interval."""
    if not _is_num(pc):
        return "–"
    return f"{pc:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if _is_ci(ci) else f"{pc:.1f}"


def _src(path, out: Path) -> str:
    """A path usable in `src=`: relative to `out`, URL-quoted, HTML-escaped."""
    p = str(path)
    if os.path.isabs(p):
        p = os.path.relpath(p, out)
    return _esc(urllib.parse.quote(Path(p).as_posix(), safe="/"))


def _table(
    head: list[str],
    rows: list[list],
    *,
    num_from: int | None = 1,
    groups: list | None = None,
    total: list | None = None,
) -> str:
    """An HTML table; columns from `num_from` on are right-aligned numbers. `groups` is an optional
    header row above `head` as (label, colspan) pairs; `total` is a bold last row."""

    def cls(i):
        return ' class="num"' if num_from is not None and i >= num_from else ""

    lines = ["<table>"]
    if groups:
        lines.append("<tr>" + "".join(f'<th colspan="{n}">{_esc(g)}</th>' for g, n in groups) + "</tr>")
    lines.append("<tr>" + "".join(f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(head)) + "</tr>")
    for row, attr in [(r, "") for r in rows] + ([(total, ' class="total"')] if total else []):
        cells = "".join(f"<td{cls(i)}>{_esc('–' if c is None else c)}</td>" for i, c in enumerate(row))
        lines.append(f"<tr{attr}>{cells}</tr>")
    return "\n".join(lines + ["</table>"])


def _new_figure(width: float, height: float):
    """A matplotlib Figure not registered with pyplot, or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, out: Path, name: str, alt: str) -> str:
    """Save a figure as `out/figures/<name>` and return the <img> tag that shows it."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / name)
    return f'<img class="fig" src="{_src("figures/" + name, out)}" alt="{_esc(alt)}">'


def read_log(path) -> list[dict]:
    """The records of a JSON-lines training log; blank, malformed and unlabelled lines are skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("kind"), str) and _is_num(rec.get("step")):
            records.append(rec)
    return records


def _header(title: str, eval_info: dict | None, world_model: dict | None) -> str:
    settings = (eval_info or {}).get("settings") or {}
    meta = [f"generated {datetime.now():%Y-%m-%d %H:%M}"]
    meta += [f"{k.replace('_', ' ')} {settings[k]}" for k in ("checkpoint", "model_hash") if settings.get(k)]
    tiles = []
    if eval_info:
        ci = eval_info.get("ci95")
        ci_text = f" (95% CI {ci[0]:.0f}–{ci[1]:.0f})" if _is_ci(ci) else ""
        tiles.append((_fmt(eval_info.get("pc_success")) + "%", "success" + ci_text))
        expert = eval_info.get("expert") or {}
        if _is_num(expert.get("pc_success")):
            tiles.append((_fmt(expert["pc_success"]) + "%", "expert success"))
        tiles += [
            (_fmt(eval_info.get("n_episodes"), ".0f"), "episodes"),
            (_fmt(eval_info.get("eval_s"), ".0f"), "eval seconds"),
        ]
    if world_model and _is_num(((world_model.get("forward") or {}).get("psnr") or [None])[0]):
        h = (world_model.get("horizons") or ["?"])[0]
        tiles.append((_fmt(world_model["forward"]["psnr"][0]), f"forward PSNR dB @ {h}"))
    parts = [
        f'<header><h1>{_esc(title)}</h1><div class="meta">{_esc(" · ".join(meta))}</div>',
        '<div class="tiles">'
        + "".join(f'<div class="tile"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for v, k in tiles)
        + "</div></header>",
        "<main>",
    ]
    rows = [
        [k, json.dumps(v, sort_keys=True)[:120] if isinstance(v, (dict, list)) else v]
        for k, v in settings.items()
        if k not in ("checkpoint", "model_hash")
    ]
    if rows:
        parts += ["<h2>Settings</h2>", _table(["setting", "value"], rows, num_from=None)]
    return "\n".join(parts)


def _success_figure(eval_info: dict, out: Path) -> str:
    rows = list(eval_info.get("per_task") or [])
    expert = eval_info.get("expert") or {}
    rows.append(
        {
            "task": "overall",
            "pc_success": eval_info.get("pc_success"),
            "ci95": eval_info.get("ci95"),
            "expert_pc_success": expert.get("pc_success"),
            "expert_ci95": expert.get("ci95"),
        }
    )
    fig = _new_figure(7, 1.1 + 0.45 * len(rows))
    if fig is None:
        return NO_FIGURES
    ax = fig.add_subplot()
    has_expert = any(_is_num(r.get("expert_pc_success")) for r in rows)
    height = 0.4 if has_expert else 0.7
    series = [("model", "pc_success", "ci95", "#3b6ea5", 0.0)]
    if has_expert:
        series.append(("expert", "expert_pc_success", "expert_ci95", "#b0b7bf", height))
    for label, key, ci_key, color, offset in series:
        ys, xs, err = [], [], [[], []]
        for i, r in enumerate(rows):
            pc, ci = r.get(key), r.get(ci_key)
            if not _is_num(pc):
                continue
            ok = _is_ci(ci)
            ys.append(i + offset)
            xs.append(pc)
            err[0].append(max(pc - ci[0], 0.0) if ok else 0.0)
            err[1].append(max(ci[1] - pc, 0.0) if ok else 0.0)
        ax.barh(ys, xs, height=height, xerr=err, color=color, label=label, capsize=3, error_kw={"lw": 1})
    ax.set_yticks(
        [i + (height / 2 if has_expert else 0) for i in range(len(rows))], [str(r.get("task", "?")) for r in rows]
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("success % (95% Wilson interval)")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False, fontsize=8)
    return _save(fig, out, "success.png", "success per task")


def _success_section(eval_info: dict, out: Path) -> str:
    expert = eval_info.get("expert") or {}
    head = ["task", "episodes", "success % [95% CI]", "expert success % [95% CI]", "avg sum reward", "avg max reward"]
    rows = [
        [
            r.get("task", "?"),
            r.get("n_episodes"),
            _pct_ci(r.get("pc_success"), r.get("ci95")),
            _pct_ci(r.get("expert_pc_success"), r.get("expert_ci95")),
            _fmt(r.get("avg_sum_reward")),
            _fmt(r.get("avg_max_reward"), ".2f"),
        ]
        for r in eval_info.get("per_task") or []
    ]
    total = [
        "overall",
        eval_info.get("n_episodes"),
        _pct_ci(eval_info.get("pc_success"), eval_info.get("ci95")),
        _pct_ci(expert.get("pc_success"), expert.get("ci95")),
        _fmt(eval_info.get("avg_sum_reward")),
        _fmt(eval_info.get("avg_max_reward"), ".2f"),
    ]
    return "\n".join(["<h2>Closed-loop success</h2>", _table(head, rows, total=total), _success_figure(eval_info, out)])


def _videos_section(eval_info: dict, out: Path) -> str:
    cells = []
    for r in eval_info.get("per_task") or []:
        successes, seeds = r.get("successes") or [], r.get("seeds") or []
        for i, p in enumerate(r.get("video_paths") or []):
            caption = f"{r.get('task', '?')} · episode {i}" + (f" · seed {seeds[i]}" if i < len(seeds) else "")
            verdict = ""
            if i < len(successes):
                verdict = (
                    ' · <span class="ok">success</span>' if successes[i] else ' · <span class="fail">failure</span>'
                )
            cells.append(
                f'<figure><video class="pix" src="{_src(p, out)}" autoplay loop muted playsinline></video>'
                f"<figcaption>{_esc(caption)}{verdict}</figcaption></figure>"
            )
    if not cells:
        return ""
    return "\n".join(["<h2>Rollout videos</h2>", '<div class="grid">', *cells, "</div>"])


def _curves_section(records: list[dict], out: Path) -> str:
    by_kind = {k: [r for r in records if r["kind"] == k] for k in ("train", "val", "tokenizer")}
    panels = [(k, v) for k, v in by_kind.items() if v]
    if not panels:
        return ""
    lines = ["<h2>Training curves</h2>"]
    train = by_kind["train"]
    if train:
        last = train[-1]
        lines.append(
            f"<p>{len(train)} training records; last at step {_esc(last['step'])}, "
            f"loss {_esc(_fmt(last.get('loss'), '.4g'))}.</p>"
        )
    keys = {"train": ("loss", "loss_video", "loss_action"), "val": MODES, "tokenizer": ("loss",)}
    titles = {"train": "training loss", "val": "validation loss per mode", "tokenizer": "tokenizer loss"}
    fig = _new_figure(4.2 * len(panels), 3.4)
    if fig is None:
        return "\n".join(lines + [NO_FIGURES])
    for ax, (kind, recs) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys[kind]:
            pts = [(r["step"], r[key]) for r in recs if _is_num(r.get(key)) and r[key] > 0]
            if pts:
                ax.plot(*zip(*pts), label=key, lw=1.2, marker="o" if len(pts) < 20 else None, ms=3)
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_title(titles[kind], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return "\n".join(lines + [_save(fig, out, "training.png", "training curves")])


def _at(values, i: int):
    return values[i] if isinstance(values, (list, tuple)) and i < len(values) else None


def _world_model_section(wm: dict, out: Path) -> str:
    horizons = list(wm.get("horizons") or [])
    lines = ["<h2>World model</h2>"]
    if _is_num(wm.get("windows")):
        lines.append(
            f"<p>{_esc(wm['windows'])} evaluation windows; horizon in control steps ahead of the "
            "current frame. The copy-last-frame baseline is the floor, the tokenizer reconstruction "
            "the ceiling.</p>"
        )
    if horizons:
        head = ["horizon"] + ["PSNR (dB)", "SSIM"] * len(WM_METHODS)
        groups = [("", 1)] + [(label, 2) for _, label in WM_METHODS]
        rows = []
        for i, h in enumerate(horizons):
            row = [h]
            for key, _ in WM_METHODS:
                m = wm.get(key) or {}
                row += [_fmt(_at(m.get("psnr"), i), ".2f"), _fmt(_at(m.get("ssim"), i), ".3f")]
            rows.append(row)
        lines.append(_table(head, rows, groups=groups))
        fig = _new_figure(5.5, 3.4)
        if fig is None:
            lines.append(NO_FIGURES)
        else:
            ax = fig.add_subplot()
            for (key, label), style in zip(WM_METHODS, ("-o", "-s", ":^", "--")):
                pts = [
                    (h, v)
                    for i, h in enumerate(horizons)
                    if _is_num(h) and _is_num(v := _at((wm.get(key) or {}).get("psnr"), i))
                ]
                if pts:
                    ax.plot(*zip(*pts), style, label=label, ms=4)
            ax.set_xticks([h for h in horizons if _is_num(h)])
            ax.set_xlabel("horizon (control steps)")
            ax.set_ylabel("PSNR (dB)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
            lines.append(_save(fig, out, "world_model_psnr.png", "PSNR against horizon"))
    inverse, policy = wm.get("inverse") or {}, wm.get("policy") or {}
    errors = [
        [name, _fmt(v, ".4g")]
        for name, v in (
            ("inverse (given future frames)", inverse.get("action_mse")),
            ("policy (history only)", policy.get("action_mse")),
            ("mean action (baseline)", inverse.get("mean_action_mse")),
        )
        if v is not None
    ]
    if errors:
        lines += ["<h3>Action errors</h3>", _table(["predictor", "action MSE"], errors)]
    strips = wm.get("strips") or []
    if strips:
        lines.append("<h3>Frame strips</h3>")
        lines += [
            f'<figure><img class="pix" src="{_src(p, out)}" alt="frame strip {i}" width="{_strip_width(out, p)}">'
            f"<figcaption>{_esc(STRIP_CAPTION)}</figcaption></figure>"
            for i, p in enumerate(strips)
        ]
    return "\n".join(lines)


def _strip_width(out: Path, path, scale: int = 2, max_width: int = 1000) -> int:
    """Display width of a strip: its pixel width scaled up (64 px frames are too small to read)."""
    try:
        from PIL import Image

        with Image.open(out / path) as im:
            return min(im.width * scale, max_width)
    except Exception:  # noqa: BLE001 (unreadable or not yet written: a width that suits a few 64 px frames)
        return 768


def _write_page(out: Path, title: str, body: list[str]) -> Path:
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
            *[b for b in body if b],
            "</main></body></html>\n",
        ]
    )
    path = out / "report.html"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".report-", suffix=".html.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_index(out, entries: list[dict], *, title: str = "wam quickstart", notes: list[str] | None = None) -> Path:
    """`out/report.html` linking several evaluations: one row per entry {"name", "report" (path of its
    report.html: absolute, or relative to the current directory like any path given to a function; the page
    links it relative to `out`), "eval_info" (dict or None), "world_model" (dict or None)}, with the headline
    numbers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for e in entries:
        info, wm = e.get("eval_info") or {}, e.get("world_model") or {}
        expert = info.get("expert") or {}
        first = lambda d: (d.get("psnr") or [None])[0] if isinstance(d, dict) else None  # noqa: E731
        # (a relative path taken as relative to `out` linked runs/quickstart/eval-x/report.html from inside
        # runs/quickstart/: a dead link)
        link = f'<a href="{_src(Path(e["report"]).resolve(), out.resolve())}">{_esc(e["name"])}</a>'
        cells = [
            _pct_ci(info.get("pc_success"), info.get("ci95")),
            _pct_ci(expert.get("pc_success"), expert.get("ci95")),
            _fmt(info.get("n_episodes"), "d") if isinstance(info.get("n_episodes"), int) else "–",
            _fmt(first(wm.get("forward"))),
            _fmt(first(wm.get("copy_last_frame"))),
        ]
        rows.append(f"<tr><td>{link}</td>" + "".join(f'<td class="num">{_esc(c)}</td>' for c in cells) + "</tr>")
    head = [
        "evaluation",
        "success % [95% CI]",
        "expert %",
        "episodes",
        "forward PSNR (dB, first frame)",
        "copy last frame PSNR",
    ]
    table = "<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>\n" + "\n".join(rows) + "</table>"
    body = [
        f"<header><h1>{_esc(title)}</h1><p>{_esc(datetime.now().strftime('%Y-%m-%d %H:%M'))}</p></header><main>",
        f"<section><h2>Evaluations</h2>{table}</section>",
    ]
    if notes:
        body.append("<section><h2>Notes</h2>" + "".join(f"<p>{_esc(n)}</p>" for n in notes) + "</section>")
    return _write_page(out, title, body)


def build_report(
    out, eval_info: dict | None = None, *, world_model: dict | None = None, log_path=None, title: str | None = None
) -> Path:
    """Write `out/report.html` (and figures under `out/figures/`) and return the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    body = [_header(title or "wam evaluation", eval_info, world_model)]
    if eval_info:
        body += [_success_section(eval_info, out), _videos_section(eval_info, out)]
    if log_path is not None:
        body.append(_curves_section(read_log(log_path), out))
    if world_model:
        body.append(_world_model_section(world_model, out))
    return _write_page(out, title or "wam evaluation", body)
