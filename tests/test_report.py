"""The HTML report: every section from its input, escaping, missing inputs, a malformed log."""

import importlib.util
import json
import sys
from html.parser import HTMLParser

from PIL import Image

from wam.report import build_report, read_log

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def task_row(task, successes, expert=100.0):
    n = len(successes)
    pc = 100.0 * sum(successes) / n
    return {
        "task": task,
        "description": f"do {task}",
        "n_episodes": n,
        "pc_success": pc,
        "ci95": [max(pc - 20, 0.0), min(pc + 10, 100.0)],
        "avg_sum_reward": 120.5,
        "avg_max_reward": 4.25,
        "expert_pc_success": expert,
        "expert_ci95": [80.0, 100.0] if expert is not None else None,
        "successes": successes,
        "seeds": list(range(n)),
        "video_paths": [f"videos/{task}/episode_{i:03d}.mp4" for i in range(n)],
    }


def small_eval_info(tasks=("reach-v3", "push-v3")):
    rows = [task_row(tasks[0], [True, True]), task_row(tasks[1], [True, False])]
    return {
        "pc_success": 75.0,
        "avg_sum_reward": 123.4,
        "avg_max_reward": 4.2,
        "n_episodes": 4,
        "ci95": [30.1, 95.4],
        "eval_s": 12.3,
        "expert": {"pc_success": 100.0, "avg_sum_reward": 300.0, "avg_max_reward": 10.0, "ci95": [51.0, 100.0]},
        "per_task": rows,
        "settings": {
            "checkpoint": "runs/mt10/checkpoint",
            "model_hash": "abc123",
            "env": "metaworld",
            "mode": "policy",
            "steps": 4,
            "guidance": 1.5,
            "note": None,
        },
    }


def small_world_model(out):
    strip = out / "world_model" / "strip_000.png"
    strip.parent.mkdir(parents=True)
    Image.new("RGB", (6 * 8, 3 * 8), (40, 120, 200)).save(strip)
    return {
        "windows": 16,
        "horizons": [4, 8],
        "forward": {"psnr": [24.5, 21.0], "ssim": [0.81, 0.72]},
        "video": {"psnr": [22.0, 19.5], "ssim": [0.75, 0.66]},
        "copy_last_frame": {"psnr": [20.0, 17.0], "ssim": [0.70, 0.60]},
        "tokenizer_reconstruction": {"psnr": [30.0, 30.0], "ssim": [0.95, 0.95]},
        "inverse": {"action_mse": 0.0123, "mean_action_mse": 0.3},
        "policy": {"action_mse": 0.0456},
        "strips": ["world_model/strip_000.png"],
    }


def write_log(path, extra_lines=()):
    lines = []
    for step in (10, 20, 30):
        lines.append(
            {
                "kind": "train",
                "step": step,
                "loss": 1.0 / step,
                "loss_video": 0.5 / step,
                "loss_action": 0.4 / step,
                "lr": 1e-4,
                "samples_per_s": 100.0,
                "grad_norm": 1.0,
            }
        )
    lines += [
        {"kind": "val", "step": 20, "policy": 0.1, "forward": 0.2, "inverse": 0.15, "video": 0.25, "joint": 0.3},
        {"kind": "val", "step": 30, "policy": 0.08, "forward": 0.18, "inverse": 0.12, "video": 0.22, "joint": 0.27},
        {"kind": "tokenizer", "step": 1, "loss": 0.5},
        {"kind": "tokenizer", "step": 2, "loss": 0.3},
    ]
    path.write_text("\n".join([json.dumps(rec) for rec in lines] + list(extra_lines)) + "\n")
    return path


class TagCounter(HTMLParser):
    """Counts start tags and checks that the page parses and its tables close."""

    def __init__(self):
        super().__init__()
        self.tags, self.open_tables = {}, 0

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.open_tables += tag == "table"

    def handle_endtag(self, tag):
        self.open_tables -= tag == "table"


def parse(text):
    counter = TagCounter()
    counter.feed(text)
    assert counter.open_tables == 0
    return counter.tags


def test_full_report(tmp_path):
    info = small_eval_info()
    wm = small_world_model(tmp_path)
    page = build_report(tmp_path, info, world_model=wm, log_path=write_log(tmp_path / "log.jsonl"), title="mt10 run")
    assert page == tmp_path / "report.html"
    text = page.read_text()
    tags = parse(text)
    for heading in ("mt10 run", "Closed-loop success", "Rollout videos", "Training curves", "World model"):
        assert heading in text
    assert "reach-v3" in text and "push-v3" in text
    assert "75.0 [30.1, 95.4]" in text and "overall" in text
    assert tags.get("video") == 4
    for row in info["per_task"]:
        for p in row["video_paths"]:
            assert f'src="{p}"' in text
    assert 'src="world_model/strip_000.png"' in text and "rows: real, forward, video" in text
    assert "runs/mt10/checkpoint" in text and "abc123" in text and "guidance" in text
    assert "24.50" in text and "0.810" in text and "0.0123" in text
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")
    assert not list(tmp_path.glob(".report-*"))  # the temporary file was renamed into place
    figures = ["success.png", "training.png", "world_model_psnr.png"]
    if HAS_MPL:
        for name in figures:
            assert f'src="figures/{name}"' in text
            assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "install wam[report] for figures" in text


def test_html_special_characters_are_escaped(tmp_path):
    info = small_eval_info(tasks=("<b>x</b>", "a&b"))
    info["settings"]["checkpoint"] = '"><script>alert(1)</script>'
    text = build_report(tmp_path, info, title="<i>t</i>").read_text()
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "a&amp;b" in text and "<script" not in text and "<i>t</i>" not in text
    assert 'src="videos/%3Cb%3Ex%3C/b%3E/episode_000.mp4"' in text  # paths are URL-quoted too
    parse(text)


def test_only_eval_info(tmp_path):
    text = build_report(tmp_path, small_eval_info()).read_text()
    parse(text)
    assert "wam evaluation" in text and "Closed-loop success" in text
    assert "World model" not in text and "Training curves" not in text


def test_only_world_model(tmp_path):
    text = build_report(tmp_path, world_model=small_world_model(tmp_path)).read_text()
    parse(text)
    assert "World model" in text and "24.50" in text
    assert "Closed-loop success" not in text and "<video" not in text and "Settings" not in text


def test_missing_optional_keys_do_not_crash(tmp_path):
    info = {"pc_success": 50.0, "per_task": [{"task": "reach-v3", "video_paths": ["v.mp4"]}], "expert": None}
    wm = {"horizons": [4], "forward": {"psnr": [20.0]}, "strips": []}
    text = build_report(tmp_path, info, world_model=wm, log_path=tmp_path / "missing.jsonl").read_text()
    parse(text)
    assert "reach-v3" in text and "50.0" in text and "Training curves" not in text
    (tmp_path / "empty.jsonl").write_text("")
    assert "Training curves" not in build_report(tmp_path, info, log_path=tmp_path / "empty.jsonl").read_text()


def test_malformed_log_lines_are_ignored(tmp_path):
    log = write_log(tmp_path / "log.jsonl", extra_lines=["{not json", "[1, 2]", '{"step": 5}', '{"kind": "train"}', ""])
    records = read_log(log)
    assert len(records) == 7 and all(r["kind"] in ("train", "val", "tokenizer") for r in records)
    text = build_report(tmp_path, log_path=log).read_text()
    assert "Training curves" in text and "3 training records" in text


def test_without_matplotlib_the_report_has_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    text = build_report(
        tmp_path, small_eval_info(), world_model=small_world_model(tmp_path), log_path=write_log(tmp_path / "log.jsonl")
    ).read_text()
    assert text.count("install wam[report] for figures") == 3
    assert not (tmp_path / "figures").exists()
