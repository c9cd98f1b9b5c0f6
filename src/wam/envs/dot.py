"""A synthetic world small enough for unit tests, where every mode of a WAM can be checked exactly.

A red dot sits at a continuous position `p` in [-1, 1]^2 on a black square image, a green goal
marker at `g`. The action `a` in [-1, 1]^2 is a velocity: `p' = clip(p + SPEED * a, -1, 1)`. The dot is
drawn as a Gaussian blob, so its position can be read back from the image to sub-pixel precision:
the next frame is a known function of the current frame and the action (forward dynamics), and the
action is a known function of two consecutive frames (inverse dynamics), away from the walls.

The scripted expert steers toward the goal with a proportional gain; `noise` adds exploration so
that actions are not a function of the frame alone, which makes inverse dynamics necessary.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from wam.errors import ArgumentError

SPEED = 0.3  # position change per step at |a| = 1 (about 4.6 pixels at 32x32)
SUCCESS_RADIUS = 0.15
BLOB_SIGMA = 1.2  # the dot's Gaussian sigma in pixels per 32 pixels of image size (2.4 at 64x64) ...
MIN_BLOB_SIGMA = 2.0  # ... and never under 2 pixels: a narrower dot lights one or two pixels, its position is
# coarsely encoded, and a WAM on 16x16 frames learned inverse dynamics from it several times more slowly
TASKS = {"reach-goal": "move the red dot to the green goal"}


def render(pos: np.ndarray, goal: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 image: the dot in the red channel, the goal in the green channel."""
    coords = np.arange(size, dtype=np.float32)

    def blob(center: np.ndarray, sigma: float) -> np.ndarray:
        cx, cy = (center + 1.0) * 0.5 * (size - 1)  # [-1, 1] -> pixel coordinates
        gx = np.exp(-0.5 * ((coords - cx) / sigma) ** 2)
        gy = np.exp(-0.5 * ((coords - cy) / sigma) ** 2)
        return np.outer(gy, gx)  # (rows=y, cols=x)

    scale = size / 32.0
    img = np.zeros((size, size, 3), dtype=np.float32)
    img[..., 0] = blob(pos, max(BLOB_SIGMA * scale, MIN_BLOB_SIGMA))
    img[..., 1] = 0.6 * blob(goal, max(1.8 * scale, 1.2))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class DotEnv(gym.Env):
    """Gymnasium environment of the synthetic dot world (see module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "lazy_images": True}  # step() honours render_images

    def __init__(self, image_size: int = 32, max_episode_steps: int = 40, task: str = "reach-goal"):
        if task not in TASKS:
            raise ArgumentError(f"unknown dot task {task!r}; choose one of: {', '.join(TASKS)}")
        self.image_size = image_size
        self.max_episode_steps = max_episode_steps
        self.fps = self.metadata["render_fps"]
        self.task = task
        self.task_description = TASKS[task]
        self.camera_names = ("top",)
        self.render_mode = "rgb_array"
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                "observation.images.top": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "observation.state": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
            }
        )
        self.pos = np.zeros(2, np.float32)
        self.goal = np.zeros(2, np.float32)
        self.steps = 0
        self.render_images = True  # False: step() returns a black image (for a policy that will not look at it)

    def _obs(self, images: bool = True) -> dict:
        s = self.image_size
        return {
            "observation.images.top": render(self.pos, self.goal, s) if images else np.zeros((s, s, 3), np.uint8),
            "observation.state": np.concatenate([self.pos, self.goal]).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        while True:
            self.goal = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
            if np.linalg.norm(self.goal - self.pos) > 1.0:  # never reachable in two steps
                break
        self.steps = 0
        return self._obs(), {"success": False}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32).reshape(2), -1.0, 1.0)
        self.pos = np.clip(self.pos + SPEED * a, -1.0, 1.0).astype(np.float32)
        self.steps += 1
        dist = float(np.linalg.norm(self.goal - self.pos))
        success = dist < SUCCESS_RADIUS
        truncated = self.steps >= self.max_episode_steps
        return self._obs(self.render_images), -dist, success, truncated, {"success": success}

    def render(self) -> np.ndarray:
        return render(self.pos, self.goal, self.image_size)


def expert_action(state: np.ndarray, rng: np.random.Generator | None = None, noise: float = 0.0) -> np.ndarray:
    """Proportional steering toward the goal, with optional Gaussian exploration noise."""
    pos, goal = state[:2], state[2:4]
    a = np.clip((goal - pos) / SPEED, -1.0, 1.0)
    if noise > 0 and rng is not None:
        a = a + rng.normal(0.0, noise, 2)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


# ---- adapter interface (see wam.envs) ----


def make_env(
    task: str | None = None,
    *,
    image_size: int = 32,
    cameras=None,
    seed: int | None = None,
    max_episode_steps: int = 40,
) -> DotEnv:
    env = DotEnv(image_size=image_size, max_episode_steps=max_episode_steps, task=task or "reach-goal")
    if seed is not None:
        env.reset(seed=seed)
    return env


def resolve_tasks(spec: str | None) -> list[str]:
    if not spec or spec == "all":
        return list(TASKS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise ArgumentError(f"unknown dot task(s) {bad}; choose from: {', '.join(TASKS)}")
    return names


def make_expert(task: str | None = None, noise: float = 0.3, seed: int = 0) -> Callable[[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    return lambda obs: expert_action(obs["observation.state"], rng, noise)


def describe(task: str | None = None) -> str:
    return TASKS[task or "reach-goal"]


def collect_arrays(
    episodes: int, *, image_size: int = 32, max_episode_steps: int = 40, noise: float = 0.3, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Run the noisy expert for `episodes` episodes and return one dict of arrays per episode:
    `frames` (T+1, H, W, 3) uint8, `actions` (T, 2), `states` (T+1, 4), `success` (bool)."""
    out = []
    expert = make_expert(noise=noise, seed=seed)
    env = DotEnv(image_size=image_size, max_episode_steps=max_episode_steps)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        frames, states, actions = [obs["observation.images.top"]], [obs["observation.state"]], []
        success = False
        for _ in range(max_episode_steps):
            a = expert(obs)
            obs, _, terminated, truncated, info = env.step(a)
            actions.append(a)
            frames.append(obs["observation.images.top"])
            states.append(obs["observation.state"])
            success = success or info["success"]
            if truncated:
                break
        out.append(
            {"frames": np.stack(frames), "actions": np.stack(actions), "states": np.stack(states), "success": success}
        )
    return out
