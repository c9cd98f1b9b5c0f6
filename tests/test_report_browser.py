"""The generated report pages in a real browser (headless Chromium over the DevTools protocol): the quickstart's
index and every evaluation page it links load with no console error, and every link, image and video resolves.

Chromium is Debian's `chromium` package, which scripts/test.sh installs when it is missing. Without it the test
is skipped with a warning saying so. Screenshots of every page are saved under the test's tmp directory (and,
with WAM_SCREENSHOTS=DIR, in DIR).
"""

import os
import shutil
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from browser import Chromium, find_chromium
from PIL import Image
from test_report import small_eval_info, write_log

from wam.report import build_index, build_report
from wam.rollout import write_video

CHROMIUM = find_chromium()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        msg = (
            "CHROMIUM IS NOT INSTALLED: the report pages were NOT tested in a browser. Run scripts/test.sh "
            "(it installs Debian's chromium) or apt-get install chromium"
        )
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    with Chromium(CHROMIUM) as b:
        yield b


def quickstart_like_site(root: Path) -> Path:
    """What `wam quickstart` writes, built the same way: evaluation pages with real H.264 videos, PNG strips
    and figures, and an index whose entries are paths relative to the current directory (runs/quickstart/...)."""
    entries = []
    for name in ("eval-reference", "eval-policy"):
        out = root / name
        info = small_eval_info()
        rng = np.random.default_rng(0)
        for row in info["per_task"]:
            for rel in row["video_paths"]:
                write_video(out / rel, rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=10)
        strip = out / "world_model" / "strip_000.png"
        strip.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 24), (40, 120, 200)).save(strip)
        wm = {
            "windows": 4,
            "horizons": [4],
            "forward": {"psnr": [24.5], "ssim": [0.8]},
            "video": {"psnr": [22.0], "ssim": [0.7]},
            "copy_last_frame": {"psnr": [20.0], "ssim": [0.7]},
            "tokenizer_reconstruction": {"psnr": [30.0], "ssim": [0.9]},
            "inverse": {"action_mse": 0.01, "mean_action_mse": 0.3},
            "policy": {"action_mse": 0.02},
            "strips": ["world_model/strip_000.png"],
        }
        build_report(out, info, world_model=wm, log_path=write_log(root / f"{name}.jsonl"))
        entries.append({"name": name, "report": root / name / "report.html", "eval_info": info, "world_model": wm})
    return build_index(root, entries, notes=["a note"])


def local_file(url: str) -> Path | None:
    u = urlparse(url)
    return Path(unquote(u.path)) if u.scheme == "file" else None


def test_quickstart_report_pages_load_cleanly_in_chromium(browser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (the quickstart passes paths relative to the current directory)
    index = quickstart_like_site(Path("runs/quickstart"))
    shots = tmp_path / "screenshots"
    seen, todo, problems = set(), [index.resolve()], []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        page = browser.open(path, screenshot=shots / f"{len(seen):02d}-{path.parent.name}.png")
        where = path.relative_to(tmp_path)
        problems += [f"{where}: {e}" for e in page.errors]
        for m in page.media:
            if not m["ok"]:
                problems.append(f"{where}: <{m['tag']}> {m['src']} {m['why']}")
        for link in page.links:
            target = local_file(link)
            if target is None:
                continue
            if not target.is_file():
                problems.append(f"{where}: dead link {link}")
            elif target.suffix == ".html":
                todo.append(target)
    assert not problems, "\n".join(problems)
    assert len(seen) == 3  # the index and the two evaluation pages it links
    pages_with_video = [p for p in seen if p.parent.name.startswith("eval-")]
    assert len(pages_with_video) == 2
    for shot in sorted(shots.iterdir()):
        with Image.open(shot) as im:
            assert im.format == "PNG" and im.width >= 800 and im.height >= 200
    if os.environ.get("WAM_SCREENSHOTS"):
        shutil.copytree(shots, os.environ["WAM_SCREENSHOTS"], dirs_exist_ok=True)


def test_the_browser_check_catches_a_dead_link_and_a_missing_video(browser, tmp_path):
    """The check itself: a dead link and a missing video are reported."""
    info = small_eval_info()  # its video files are never written
    page_path = build_report(tmp_path / "eval", info)
    index = build_index(tmp_path, [{"name": "gone", "report": tmp_path / "nowhere" / "report.html"}])
    page = browser.open(page_path)
    assert [m for m in page.media if m["tag"] == "video" and not m["ok"]]
    assert any("failed to load" in e or "log error" in e for e in page.errors)
    links = browser.open(index).links
    assert any(local_file(u) is not None and not local_file(u).exists() for u in links)
