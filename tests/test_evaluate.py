"""Evaluation arithmetic: per-group success, the mean of group means (the published MT50 convention) and
their intervals, and the environment settings that give a policy the observation it was trained on."""

import math

import pytest

from wam.evaluate import env_options_for
from wam.stats import group_results, paired_difference, wilson_interval


def _row(task, successes, expert=None):
    return {
        "task": task,
        "successes": successes,
        "pc_success": 100.0 * sum(successes) / len(successes),
        "expert_successes": expert,
    }


def test_groups_report_episode_means_task_means_and_the_mean_of_group_means():
    rows = [_row("a", [1, 1, 0, 1], [1] * 4), _row("b", [0, 0, 0, 1], [1, 1, 1, 0]), _row("c", [1, 1], [1, 1])]
    out = group_results(rows, {"easy": ("a", "b"), "hard": ("c", "absent"), "unused": ("q",)})
    easy, hard = out["groups"]["easy"], out["groups"]["hard"]
    assert set(out["groups"]) == {"easy", "hard"}  # a group with no evaluated task does not count
    assert easy["tasks"] == ["a", "b"] and easy["n_episodes"] == 8 and easy["pc_success"] == 50.0
    assert easy["task_mean"] == 50.0 and easy["expert_pc_success"] == 87.5
    lo, hi = wilson_interval(4, 8)
    assert easy["ci95"] == pytest.approx([100 * lo, 100 * hi])
    assert hard["pc_success"] == 100.0 and hard["ci95"][1] == 100.0
    gm = out["group_mean"]
    assert gm["pc_success"] == 75.0 and gm["groups_evaluated"] == ["easy", "hard"]
    half = 100 * 1.96 * math.sqrt(0.5 * 0.5 / 8 + 0.0) / 2
    assert gm["ci95"] == pytest.approx([75.0 - half, 75.0 + half]) and gm["expert_pc_success"] == pytest.approx(93.75)


def test_paired_difference_counts_discordant_episodes_and_tests_them_exactly():
    a = [1, 1, 0, 0, 1, 0, 1, 0, 0, 0]
    b = [1] * 10  # solves the 6 episodes that `a` fails, fails none that `a` solves
    r = paired_difference(a, b)
    assert r["difference"] == pytest.approx(60.0) and (r["only_a"], r["only_b"]) == (0, 6)
    assert r["mcnemar_p"] == pytest.approx(2 / 2**6)  # both tails of Binomial(6, 1/2) at 0 and 6
    assert 0 < r["ci95"][0] < 60 < r["ci95"][1] <= 100
    assert paired_difference(a, b) == r  # the bootstrap is seeded
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    swapped = paired_difference(b, a)
    assert swapped["difference"] == pytest.approx(-60.0) and swapped["mcnemar_p"] == r["mcnemar_p"]
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1, 0], [1])


def test_unequal_groups_make_the_two_conventions_differ():
    # 28 easy tasks all solved, 5 very hard ones never: the published group mean halves what a per-episode mean says
    rows = [_row(f"e{i}", [1, 1]) for i in range(28)] + [_row(f"v{i}", [0, 0]) for i in range(5)]
    out = group_results(rows, {"easy": [f"e{i}" for i in range(28)], "very_hard": [f"v{i}" for i in range(5)]})
    assert out["group_mean"]["pc_success"] == 50.0
    assert "expert_pc_success" not in out["group_mean"]
    episodes = sum(sum(r["successes"]) for r in rows) / sum(len(r["successes"]) for r in rows)
    assert 100 * episodes == pytest.approx(84.85, abs=0.01)


def test_environment_settings_follow_the_policy():
    class Policy:
        def __init__(self, size):
            self.size = size

        def state_size(self, task=None):
            return self.size

    pytest.importorskip("metaworld")
    assert env_options_for(Policy(4), "metaworld", "reach-v3") == {"state": "proprio"}
    assert env_options_for(Policy(39), "metaworld", "reach-v3") == {"state": "full"}
    assert env_options_for(Policy(0), "metaworld", "reach-v3") == {}
    assert env_options_for(object(), "metaworld", "reach-v3") == {}  # a policy that does not say: the defaults
    assert env_options_for(Policy(4), "dot", "reach-goal") == {}  # one kind of state only
    with pytest.raises(ValueError, match="4 values.*or 39"):
        env_options_for(Policy(7), "metaworld", "reach-v3")


def test_seed_sets_are_named_and_recorded():
    from wam.evaluate import SEED_SETS, resolve_seed

    assert resolve_seed("dev") == (SEED_SETS["dev"], "dev") and resolve_seed("test") == (SEED_SETS["test"], "test")
    assert SEED_SETS["dev"] != SEED_SETS["test"]
    assert resolve_seed(0) == (0, "dev") and resolve_seed("12") == (12, None)
    with pytest.raises(ValueError, match="unknown seed set 'tset'"):
        resolve_seed("tset")


def test_a_protocol_refuses_a_policy_that_reads_what_it_does_not_give():
    from wam.evaluate import protocol_env_options

    class Policy:
        def state_size(self, task=None):
            return 39

    pytest.importorskip("metaworld")
    opts = protocol_env_options(object(), "metaworld", ["reach-v3"], "lerobot", ["corner4"], None)
    assert opts["goal_marker"] == 0 and opts["render_size"] == 480 and "cameras" not in opts
    assert protocol_env_options(object(), "metaworld", ["reach-v3"], None, None, None) == {}
    with pytest.raises(ValueError, match="gives the camera"):
        protocol_env_options(object(), "metaworld", ["reach-v3"], "lerobot", ["gripperPOV"], None)
    with pytest.raises(ValueError, match="state='full'"):
        protocol_env_options(Policy(), "metaworld", ["reach-v3"], "lerobot", None, None)
    with pytest.raises(ValueError, match="renders at 480"):
        protocol_env_options(object(), "metaworld", ["reach-v3"], "lerobot", None, 128)
    with pytest.raises(ValueError, match="no named protocols"):
        protocol_env_options(object(), "dot", ["reach-goal"], "lerobot", None, None)
