"""The 50 MetaWorld v3 tasks as gymnasium environments with fast headless camera rendering.

    env = make_env("push-v3", image_size=64, cameras=["corner4"], seed=0)
    obs, info = env.reset(seed=0)           # obs["observation.images.corner4"]: (64, 64, 3) uint8
    expert = make_expert("push-v3")         # obs["observation.state"]: (4,) float32, hand xyz + gripper
    obs, reward, terminated, truncated, info = env.step(expert(obs))    # info["success"]: bool

Observations use LeRobot's keys and the vision protocol of LeRobot's MetaWorld environment and its
`metaworld_mt50` dataset: `observation.state` is what the robot knows about itself, the hand position
and gripper opening (4-D, the first 4 values of MetaWorld's observation). What only the simulator knows
is `observation.environment_state`, MetaWorld's full 39-D observation: hand and gripper (4), first and
second object position and quaternion (14), the same 18 values one step earlier, and the goal position
(3). It is always there, for the scripted experts and for analysis; a policy trained on camera +
proprioception never reads it. `state="full"` puts the 39-D vector in `observation.state` too (the
privileged-state setting, for ablations and for models trained that way).

Goal markers: in eleven tasks (`GOAL_MARKER_TASKS`) the goal is a point in space that no object marks
(reach, push and pick-place and their variants, the mug's place in coffee-pull, the plate's place in
the plate-slide-back tasks, the lifted puck's height in pick-out-of-hole). MetaWorld draws it as a
2 cm sphere, one or two pixels at 64 px: a policy that only sees could not tell where to go. These
environments draw it as a `goal_marker`-sized sphere (default 4 cm radius; rendering only, physics is
untouched); `goal_marker=0` keeps MetaWorld's own. In every other task the goal follows from what is
visible (the button, the drawer, the door, the shelf, the hole, ...).

Rendering: MuJoCo renders offscreen through EGL (`MUJOCO_GL=egl`, set here unless already set;
`osmesa` works too). Two looks: `look="fast"` (the default) switches off MetaWorld's 4x multisampling,
shadows, reflections and skybox (the background turns black), about 100 frames/s on one CPU core at
64-128 px; `look="metaworld"` keeps MetaWorld's lighting, shadows and grey backdrop: the
frames LeRobot's MetaWorld environment renders. It leaves out the multisampling and the reflection pass
(which changes no pixel of these scenes) and draws the shadow map at 2048 px instead of 4096: rendered at
480 px and resized to 96 or 128 px, those frames differ from MetaWorld's own renderer by 0.2 of 255 levels
on average (99th percentile 3-4 levels), at 2.4-3.5x its speed. `render_size` renders at that many
pixels and resizes every image to `image_size` with antialiasing, exactly as training frames are resized
to the model's size (`resize_frames`). Setting `env.render_images = False` makes `step()` skip the rendering
and return black images, for observations the policy will not look at (`wam.rollout` does this: a policy that
executes four actions per prediction looks at one observation in four).

Protocols (`PROTOCOLS`): named sets of these settings that a benchmark fixes. `lerobot` is MetaWorld as
LeRobot's environment presents it and the published MT50 results were scored on: MetaWorld's own goal
markers, the `corner4` view (LeRobot's moved `corner2`), the 4-D hand + gripper state, 400 steps, the
scene rendered with MetaWorld's look at 480x480 and resized to the model's input. `wam` is this
package's earlier setting (4 cm goal markers, the fast look at the model's size, 500 steps). The corner
cameras of MetaWorld are mounted rolled upside down (their up axis points at the floor); their images
are rotated by 180 degrees, which is the exact inverse of that roll (a vertical flip alone would leave
the scene mirrored). The rule is geometric: any camera whose up axis points below the horizon is
rotated, so it holds for cameras added later.

Seeding: `reset(seed=s)` draws the object and goal positions from `s` alone (MetaWorld's seeded
random-vector mode), so the same seed gives the same episode; `reset()` without a seed continues
from the environment's generator. Success is MetaWorld's per-step flag; it does not persist (an
object can be knocked off its goal), so callers count success at any step. Episodes are truncated at
the task's limit (500 steps) or `max_episode_steps` if lower.

Task sets: `mt10`, `mt25`, `mt50` (= `all`) from MetaWorld, and the difficulty groups `easy` (28),
`medium` (11), `hard` (6) and `very_hard` (5) of Seo et al., "Masked World Models for Visual
Control" (CoRL 2022), which also served for later multi-task evaluations.
"""

from __future__ import annotations

import atexit
import difflib
import os
import warnings
import weakref
from collections.abc import Callable, Sequence

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first `import mujoco`

import gymnasium as gym
import numpy as np

from wam.errors import ArgumentError

DEFAULT_CAMERA = "corner4"
# `corner4` is `corner2` moved to (0.75, 0.075, 0.7), the view LeRobot's MetaWorld environment renders (it moves
# `corner2` there) and its `metaworld_mt50` frames show; `gripperPOV` is a wrist camera.
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
FPS = 80  # MuJoCo timestep 2.5 ms x frame_skip 5 = 12.5 ms per control step

DESCRIPTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the ball and drop it into the basket",
    "bin-picking-v3": "move the puck from one bin into the other bin",
    "box-close-v3": "pick up the lid and put it on the box",
    "button-press-topdown-v3": "press the button from above",
    "button-press-topdown-wall-v3": "reach over the wall and press the button from above",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "reach around the wall and press the button",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial half a turn",
    "disassemble-v3": "lift the nut off the peg",
    "door-close-v3": "swing the door closed",
    "door-lock-v3": "turn the door lock clockwise to lock the door",
    "door-open-v3": "pull the door open on its hinge",
    "door-unlock-v3": "turn the door lock counter-clockwise to unlock the door",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle clockwise",
    "faucet-open-v3": "turn the faucet handle counter-clockwise",
    "hammer-v3": "pick up the hammer and drive the nail into the wall",
    "hand-insert-v3": "put the gripper into the hole in the table",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever down a quarter turn",
    "peg-insert-side-v3": "pick up the peg and insert it into the hole from the side",
    "peg-unplug-side-v3": "pull the peg sideways out of its hole",
    "pick-out-of-hole-v3": "lift the puck out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck, carry it over the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "pull the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "reach-v3": "move the gripper to the goal position",
    "reach-wall-v3": "move the gripper past the wall to the goal position",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "soccer-v3": "push the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the edge of the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}

DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}

ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
STATE_MODES = ("proprio", "full")  # observation.state: hand xyz + gripper (4-D), or the full 39-D observation
GOAL_MARKER = 0.04  # radius (m) of the drawn goal sphere in GOAL_MARKER_TASKS
GOAL_MARKER_TASKS = (
    "reach-v3",
    "reach-wall-v3",
    "push-v3",
    "push-wall-v3",
    "push-back-v3",
    "pick-place-v3",
    "pick-place-wall-v3",
    "pick-out-of-hole-v3",
    "coffee-pull-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
)
_OBJ = [f"{o}_{c}" for o in ("obj1", "obj2") for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
_NOW = ["hand_x", "hand_y", "hand_z", "gripper_opening"] + _OBJ
STATE_NAMES = _NOW + [f"prev_{n}" for n in _NOW] + ["goal_x", "goal_y", "goal_z"]  # the 39-D observation
PROPRIO_NAMES = STATE_NAMES[:4]
LOOKS = ("fast", "metaworld")
_METAWORLD_SHADOW_SIZE = 2048  # px; the same frames as MetaWorld's 4096 once resized (module docstring)

# Every setting of a benchmark's protocol that reaches the environment (module docstring, "Protocols").
PROTOCOLS: dict[str, dict] = {
    "lerobot": {
        "goal_marker": 0.0,
        "look": "metaworld",
        "render_size": 480,
        "max_episode_steps": 400,
        "cameras": (DEFAULT_CAMERA,),
        "state": "proprio",
    },
    "wam": {
        "goal_marker": GOAL_MARKER,
        "look": "fast",
        "render_size": None,
        "max_episode_steps": None,
        "cameras": (DEFAULT_CAMERA,),
        "state": "proprio",
    },
}


def protocol(name: str) -> dict:
    """The environment settings of a named protocol (`PROTOCOLS`)."""
    return _protocol(name)


def _protocol(name: str) -> dict:  # (make_env's argument `protocol` hides the public name there)
    if name not in PROTOCOLS:
        raise ArgumentError(f"unknown MetaWorld protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}")
    return dict(PROTOCOLS[name])


def protocol_of(settings: dict) -> str | None:
    """The named protocol (`PROTOCOLS`) that a collection's recorded settings (the `settings` of a dataset's
    meta/collection.json: its env_options, cameras and state) are exactly, or None."""
    for name, p in PROTOCOLS.items():
        env_options = {k: v for k, v in p.items() if k not in ("cameras", "state")}
        if (
            settings.get("env_options") == env_options
            and list(settings.get("cameras") or ()) == list(p["cameras"])
            and settings.get("state") == p["state"]
        ):
            return name
    return None


def state_mode(size: int) -> str:
    """The `state` setting whose observation.state has `size` values (a checkpoint records only the size)."""
    modes = {len(PROPRIO_NAMES): "proprio", len(STATE_NAMES): "full"}
    if size not in modes:
        raise ArgumentError(
            f"a MetaWorld observation.state has 4 values (state='proprio') or 39 (state='full'); "
            f"the policy expects {size}"
        )
    return modes[size]


_OPEN_ENVS: weakref.WeakSet = weakref.WeakSet()
_CLOSE_AT_EXIT: list[bool] = []


def _close_open_envs() -> None:
    # GL contexts must be freed while EGL is still initialised. MuJoCo registers eglTerminate with atexit
    # when first imported; this hook is registered after that import, so it runs before it (LIFO).
    for env in list(_OPEN_ENVS):
        env.close()


def task_sets() -> dict[str, list[str]]:
    """Every named task set."""
    from metaworld import env_dict

    every = list(env_dict.ALL_V3_ENVIRONMENTS)
    sets = {"mt10": list(env_dict.MT10_V3), "mt25": list(env_dict.MT25_V3), "mt50": every, "all": every}
    sets.update({k: list(v) for k, v in DIFFICULTY.items()})
    return sets


def resolve_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """Task names from a set name (`mt10`, `easy`, ...), task names (with or without `-v3`), or a
    comma-separated mix of both; None means all 50. Order is kept, duplicates dropped."""
    items = ["all"] if not spec else ([s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec))
    sets = task_sets()
    out: list[str] = []
    for item in items:
        if not item:
            continue
        name = item.lower().replace("very-hard", "very_hard")
        if name in sets:
            names = sets[name]
        elif name in DESCRIPTIONS or f"{name}-v3" in DESCRIPTIONS:
            names = [name if name in DESCRIPTIONS else f"{name}-v3"]
        else:
            close = difflib.get_close_matches(name, list(DESCRIPTIONS) + list(sets), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ArgumentError(
                f"unknown MetaWorld task or task set {item!r}{hint} "
                f"(sets: {', '.join(sets)}; tasks: the 50 MetaWorld v3 names, e.g. reach-v3)"
            )
        out += [n for n in names if n not in out]
    if not out:
        raise ArgumentError("no tasks given")
    return out


def describe(task: str) -> str:
    """The natural-language instruction of a task."""
    if task not in DESCRIPTIONS:
        raise ArgumentError(f"unknown MetaWorld task {task!r}")
    return DESCRIPTIONS[task]


def _env_settings(
    task: str, cameras, *, image_size: int, state: str, goal_marker: float, look: str, render_size: int | None
) -> tuple[str, tuple[str, ...], int]:
    """MetaWorldEnv's settings checked: (its one task's name, its cameras, the size it renders at)."""
    if task not in DESCRIPTIONS:
        names = resolve_tasks(task)  # "reach" -> ["reach-v3"]; unknown names raise with suggestions
        if len(names) != 1:
            raise ArgumentError(f"{task!r} names {len(names)} tasks; an environment runs exactly one")
        task = names[0]
    cameras = tuple(cameras) if cameras else (DEFAULT_CAMERA,)
    bad = [c for c in cameras if c not in CAMERAS]
    if bad:
        raise ArgumentError(f"unknown MetaWorld camera(s) {bad}; choose from: {', '.join(CAMERAS)}")
    if image_size < 16:
        raise ArgumentError(f"image_size must be at least 16 pixels, got {image_size}")
    if state not in STATE_MODES:
        raise ArgumentError(
            f"unknown state {state!r}; choose 'proprio' (hand xyz + gripper, 4-D) or 'full' "
            f"(MetaWorld's 39-D observation with object and goal poses)"
        )
    if goal_marker < 0:
        raise ArgumentError(f"goal_marker is a radius in metres (0: MetaWorld's own marker), got {goal_marker}")
    if look not in LOOKS:
        raise ArgumentError(
            f"unknown look {look!r}; choose 'fast' (no shadows, reflections or backdrop) or "
            f"'metaworld' (MetaWorld's own lighting, as LeRobot renders it)"
        )
    render_size = int(render_size or image_size)
    if render_size < 16:
        raise ArgumentError(f"render_size must be at least 16 pixels, got {render_size}")
    return task, cameras, render_size


class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task with camera images, proprioception and the simulator's state (module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS, "lazy_images": True}  # step() honours render_images

    def __init__(
        self,
        task: str,
        *,
        image_size: int = 64,
        cameras: Sequence[str] | None = None,
        max_episode_steps: int | None = None,
        state: str = "proprio",
        goal_marker: float = GOAL_MARKER,
        look: str = "fast",
        render_size: int | None = None,
    ):
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        task, cameras, render_size = _env_settings(
            task,
            cameras,
            image_size=image_size,
            state=state,
            goal_marker=goal_marker,
            look=look,
            render_size=render_size,
        )
        self.look = look
        self.render_size = render_size
        self.state_mode = state
        self.task = task
        self.task_description = DESCRIPTIONS[task]
        self.camera_names = cameras
        self.image_size = int(image_size)
        self.fps = FPS
        self.robot_type = "sawyer"
        self.action_names = ACTION_NAMES
        self.state_names = STATE_NAMES if state == "full" else PROPRIO_NAMES
        self.environment_state_names = STATE_NAMES
        self.render_mode = "rgb_array"
        self._mujoco = mujoco

        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"]()
        self._env._freeze_rand_vec = False  # draw a new layout on every reset ...
        self._env.seeded_rand_vec = True  # ... from the env's own seeded generator
        self.max_episode_steps = min(int(max_episode_steps or self._env.max_path_length), self._env.max_path_length)
        self._open_renderer(goal_marker, look, render_size)
        self._spaces(image_size)
        self._steps = 0
        # False: step() leaves the camera images black instead of rendering them, for a caller that knows its
        # policy will not look at that observation's images (wam.rollout asks the policy: a policy executing
        # several actions per prediction looks at one observation in several). reset() always renders.
        self.render_images = True
        _OPEN_ENVS.add(self)
        if not _CLOSE_AT_EXIT:
            atexit.register(_close_open_envs)
            _CLOSE_AT_EXIT.append(True)

    def _open_renderer(self, goal_marker: float, look: str, render_size: int) -> None:
        """The scene as the look draws it (goal markers, shadows, render passes), its offscreen renderer, and
        which cameras hang upside down."""
        mujoco = self._mujoco
        model, data = self._env.model, self._env.data
        if goal_marker and self.task in GOAL_MARKER_TASKS:  # draw the goal where nothing else shows it (docstring)
            for name, _ in self._env._target_site_config:
                sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)
                if sid >= 0:
                    model.site_size[sid, 0] = max(float(model.site_size[sid, 0]), goal_marker)
        model.vis.quality.offsamples = 0  # no multisampling; must be set before the renderer exists
        if look == "metaworld":
            model.vis.quality.shadowsize = _METAWORLD_SHADOW_SIZE
        try:
            self._renderer = mujoco.Renderer(model, render_size, render_size)
        except Exception as e:
            self._env.close()
            raise OSError(
                f"MuJoCo cannot render offscreen ({e}). Set MUJOCO_GL=egl (or osmesa) before anything imports "
                f"mujoco (currently {os.environ.get('MUJOCO_GL')!r}) and install the Debian packages libegl1 "
                f"libegl-mesa0 libgl1-mesa-dri (scripts/setup.sh does both)"
            ) from e
        # the reflection pass changes no pixel of these scenes (measured on five tasks at 480 px): off in both looks
        self._flags = (
            (mujoco.mjtRndFlag.mjRND_REFLECTION,)
            if look == "metaworld"
            else (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX)
        )
        mujoco.mj_forward(model, data)
        self._upside_down = {}
        for cam in self.camera_names:
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            up = data.cam_xmat[cam_id].reshape(3, 3)[:, 1]  # the camera's y axis = image up, in world frame
            self._upside_down[cam] = bool(up[2] < 0)

    def _spaces(self, image_size: int) -> None:
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        spaces = {
            f"observation.images.{c}": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
            for c in self.camera_names
        }
        spaces["observation.state"] = gym.spaces.Box(-np.inf, np.inf, (len(self.state_names),), np.float32)
        spaces["observation.environment_state"] = gym.spaces.Box(-np.inf, np.inf, (39,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def render_camera(self, camera: str) -> np.ndarray:
        """(image_size, image_size, 3) uint8 image of one camera, upright (rendered at render_size)."""
        r = self._renderer
        r.update_scene(self._env.data, camera=camera)
        for flag in self._flags:
            r.scene.flags[flag] = 0
        img = r.render()
        img = np.ascontiguousarray(img[::-1, ::-1]) if self._upside_down.get(camera) else img
        if self.render_size != self.image_size:
            from wam.data.windows import resize_frames

            img = resize_frames(img[None], (self.image_size, self.image_size))[0].transpose(1, 2, 0)
        return np.ascontiguousarray(img)

    def _obs(self, state: np.ndarray, images: bool = True) -> dict:
        if images:
            obs = {f"observation.images.{c}": self.render_camera(c) for c in self.camera_names}
        else:  # black, never seen (render_images); the same shapes, for the observation space
            s = self.image_size
            obs = {f"observation.images.{c}": np.zeros((s, s, 3), np.uint8) for c in self.camera_names}
        full = np.asarray(state, dtype=np.float32)
        obs["observation.state"] = full if self.state_mode == "full" else full[: len(PROPRIO_NAMES)].copy()
        obs["observation.environment_state"] = full
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self._env.seed(int(seed))
        # Start from MuJoCo's pristine state (mocap targets, solver warm start): otherwise the 50 settling
        # steps of MetaWorld's reset begin where the last episode ended and the same seed renders differently.
        self._mujoco.mj_resetData(self._env.model, self._env.data)
        state, _ = self._env.reset()
        self._steps = 0
        return self._obs(state), {"success": False}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
        state, reward, _, truncated, info = self._env.step(a)
        self._steps += 1
        truncated = bool(truncated or self._steps >= self.max_episode_steps)
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0) > 0.5)
        return self._obs(state, self.render_images), float(reward), False, truncated, info

    def render(self) -> np.ndarray:
        return self.render_camera(self.camera_names[0])

    def close(self) -> None:
        # Free the GL context now (also done for open envs at exit): left to interpreter teardown, EGL may
        # already be unloaded and print errors.
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_env", None) is not None:
            self._env.close()


# ---- adapter interface (see wam.envs) ----


def make_env(
    task: str | None = None,
    *,
    image_size: int = 64,
    cameras: Sequence[str] | None = None,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    state: str = "proprio",
    goal_marker: float = GOAL_MARKER,
    look: str = "fast",
    render_size: int | None = None,
    protocol: str | None = None,
) -> MetaWorldEnv:
    """A MetaWorld task as a gymnasium env (module docstring). `protocol` (`PROTOCOLS`, e.g. "lerobot") sets the
    benchmark's goal markers, look, render size, step limit, camera and state in one word."""
    if protocol is not None:
        settings = _protocol(protocol)
        if cameras is not None and list(cameras) != list(settings["cameras"]):
            raise ArgumentError(
                f"protocol {protocol!r} gives the camera(s) {list(settings['cameras'])}; leave cameras out"
            )
        goal_marker, look, render_size = settings["goal_marker"], settings["look"], settings["render_size"]
        max_episode_steps, cameras, state = settings["max_episode_steps"], settings["cameras"], settings["state"]
    env = MetaWorldEnv(
        task or "reach-v3",
        image_size=image_size,
        cameras=cameras,
        max_episode_steps=max_episode_steps,
        state=state,
        goal_marker=goal_marker,
        look=look,
        render_size=render_size,
    )
    if seed is not None:
        env.reset(seed=seed)
    return env


def make_expert(task: str) -> Callable[[dict], np.ndarray]:
    """MetaWorld's scripted policy for `task`, acting on an observation dict (it reads the simulator's
    39-D `observation.environment_state`, or a 39-D `observation.state` where that is absent)."""
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ArgumentError(f"no scripted expert for MetaWorld task {task!r}")
    policy = ENV_POLICY_MAP[task]()

    def act(obs: dict) -> np.ndarray:
        state = np.asarray(obs.get("observation.environment_state", obs["observation.state"]), dtype=np.float64)
        if state.shape[-1] != len(STATE_NAMES):
            raise ArgumentError(
                f"the scripted expert needs MetaWorld's 39-D observation "
                f"(observation.environment_state); got {state.shape[-1]} values"
            )
        with warnings.catch_warnings():  # the experts warn whenever their gains saturate, which is expected
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = policy.get_action(state)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act
