"""`wam quickstart`, the main job, runs its five steps end to end (on a budget of seconds)."""

import json

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_the_quickstart_runs_its_five_steps_into_one_report(tmp_path, capsys):
    pytest.importorskip("metaworld")
    from wam.quickstart import quickstart

    tiny = {"width": 32, "depth": 2, "image_size": 32, "tokenizer_width": 8}
    summary = quickstart(
        tmp_path / "qs",
        tasks="reach-v3",
        episodes=4,
        steps=4,
        tokenizer_steps=2,
        eval_episodes=1,
        max_steps=5,
        image_size=32,
        reference_tasks="reach-v3",
        reference_episodes=1,
        model_changes=tiny,
        workers=1,
    )
    printed = capsys.readouterr().out
    assert [f"[{i}/5]" in printed for i in range(1, 6)] == [True] * 5 and "skipped" not in printed
    assert set(summary) == {"trained_policy", "trained_joint", "trained_inverse", "reference"}
    assert all(row["n_episodes"] == 1 for row in summary.values())
    assert json.loads((tmp_path / "qs" / "summary.json").read_text()) == summary
    index = (tmp_path / "qs" / "report.html").read_text()
    for name in ("eval-policy", "eval-joint", "eval-inverse", "eval-reference"):
        assert (tmp_path / "qs" / name / "report.html").is_file() and name in index
