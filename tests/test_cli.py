"""Every verb of the foundation on a tiny setting (the data verbs have their own test files)."""

import json
import subprocess
import sys

import pytest

from wam.cli import main


def test_help_lists_the_verbs():
    out = subprocess.run([sys.executable, "-m", "wam.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in ("presets", "quickstart", "dataset", "collect"):
        assert verb in out.stdout


def test_public_api():
    import wam

    from wam import MODES, WAM  # noqa: F401
    assert set(MODES) == {"policy", "forward", "inverse", "video", "joint"}
    with pytest.raises(AttributeError):
        wam.not_a_thing  # noqa: B018


def test_presets_json(capsys):
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["preset"] for r in rows] == ["wam-tiny", "wam-small", "wam-base"]


@pytest.mark.sim
def test_quickstart_runs_end_to_end(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--synthetic-steps", "20", "--metaworld-tasks", "reach-v3",
                 "--metaworld-episodes", "1"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["synthetic"]) >= {"policy", "forward", "inverse", "video", "joint"}
    assert summary["metaworld"]["check_ok"] is True
    assert (tmp_path / "synthetic" / "checkpoint" / "model.safetensors").is_file()
    assert "not yet in this version" in capsys.readouterr().out
