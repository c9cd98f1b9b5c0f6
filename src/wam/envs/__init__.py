"""Simulators, each behind one small adapter module imported only when used.

An adapter module offers four functions:

- `make_env(task, *, image_size, cameras=None, seed=None, <the family's own settings>) -> gymnasium.Env`
  Observations are dicts with LeRobot keys: `observation.images.<camera>` (H, W, 3) uint8 and
  `observation.state` (S,) float32; `info["success"]` is the task's success flag; the env has
  `task_description` (str), `fps` (int), `max_episode_steps` (int) and `camera_names` (tuple).
- `resolve_tasks(spec) -> list[str]`: a named task set ("mt10") or a comma-separated list.
- `make_expert(task) -> Callable[[dict], np.ndarray]`: a scripted expert acting on an observation dict.
- `describe(task) -> str`: the natural-language instruction of a task.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

from wam.errors import ArgumentError, MissingDependency

ENVS: dict[str, str] = {
    "dot": "wam.envs.dot",  # synthetic 2-D world for tests: a dot pushed by velocity actions to a goal
    "metaworld": "wam.envs.metaworld",  # the 50 MetaWorld v3 tasks (extra: wam[sim])
}


def get_adapter(name: str) -> ModuleType:
    """The adapter module of a registered environment family."""
    if name not in ENVS:
        raise ArgumentError(f"unknown environment {name!r}; choose one of: {', '.join(ENVS)}")
    try:
        return importlib.import_module(ENVS[name])
    except ImportError as e:  # an optional extra is missing
        raise MissingDependency(
            f"environment {name!r} needs an optional dependency ({e}); install it with: pip install 'wam[sim]'"
        ) from e


def make_env(name: str, task: str | None = None, **kwargs):
    """Environment `task` of the family `name`, with the adapter's settings (`image_size`, `cameras`, `seed`, and
    the family's own, e.g. MetaWorld's `protocol`); a setting the adapter does not have is refused by name."""
    adapter = get_adapter(name)
    known = inspect.signature(adapter.make_env).parameters
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ArgumentError(
            f"environment {name!r} has no setting(s) {', '.join(unknown)}; its settings are: "
            + ", ".join(k for k in known if k != "task")
        )
    return adapter.make_env(task, **kwargs)
