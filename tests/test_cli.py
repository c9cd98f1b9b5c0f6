"""Every verb of the foundation on a tiny setting (the data verbs have their own test files)."""

import json
import subprocess
import sys

import pytest

from wam.cli import main


def test_help_lists_the_verbs():
    out = subprocess.run([sys.executable, "-m", "wam.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in ("presets", "quickstart", "dataset", "collect", "train", "eval"):
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
    from wam.quickstart import REFERENCE

    assert (
        main(
            [
                "quickstart",
                "--out",
                str(tmp_path),
                "--tasks",
                "reach-v3",
                "--episodes",
                "3",
                "--steps",
                "6",
                "--tokenizer-steps",
                "4",
                "--eval-episodes",
                "1",
                "--max-steps",
                "10",
                "--reference-tasks",
                "reach-v3",
                "--reference-episodes",
                "1",
                "--model",
                "width=32",
                "--model",
                "depth=1",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"trained_policy", "trained_joint", "trained_inverse"} <= set(summary)
    for mode in ("policy", "joint", "inverse"):
        info = json.loads((tmp_path / f"eval-{mode}" / "eval_info.json").read_text())
        assert info["settings"]["mode"] == mode and info["n_episodes"] == 1
        assert (tmp_path / f"eval-{mode}" / "report.html").is_file()
    assert "world_model" in json.loads((tmp_path / "eval-policy" / "eval_info.json").read_text())
    if (REFERENCE / "model.safetensors").is_file():
        assert (tmp_path / "eval-reference" / "eval_info.json").is_file()
        assert "reference" in summary
    index = (tmp_path / "report.html").read_text()
    assert "eval-policy/report.html" in index
    assert "report:" in capsys.readouterr().out
