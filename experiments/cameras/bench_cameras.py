"""Which camera and image size let a policy see what MetaWorld's tasks need? A geometric measurement.

    MUJOCO_GL=egl python experiments/cameras/bench_cameras.py --out experiments/cameras/cameras.json

For every MT50 task and 10 layouts (evaluation-style seeds), and for each camera, this projects the
task's first object and its goal (from `observation.environment_state`) into the image with MuJoCo's
camera model and reports, per camera and image size:

- `object_in_view` / `goal_in_view`: the share of layouts where the point lands inside the frame;
- `object_px` / `goal_px`: the median width in pixels of 4 cm (a puck's diameter, the drawn goal marker's
  size) at that point's depth, over the layouts where it is in view;
- `hand_in_view`: the same for the gripper, which every task needs.

`corner2-lerobot` is MetaWorld's `corner2` moved where LeRobot's MetaWorld environment puts it
(position (0.75, 0.075, 0.7), the same orientation). A point can be in view and hidden behind the arm;
this counts geometry, not occlusion, and says nothing about texture or contrast: it bounds what a
camera can show, and a training run decides the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

CAMERAS = ("corner", "corner2", "corner2-lerobot", "corner3", "corner4", "topview")
SIZES = (64, 96, 128)
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)


def project(model, data, cam_id: int, point: np.ndarray, size: int) -> tuple[float, float, float]:
    """World point -> (u, v) pixel coordinates (origin top left, before any image flip) and depth (m)."""
    pos, rot = data.cam_xpos[cam_id], data.cam_xmat[cam_id].reshape(3, 3)
    rel = rot.T @ (point - pos)  # camera frame: x right, y up, looking down -z
    depth = -rel[2]
    f = 0.5 * size / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2)
    u = size / 2 + f * rel[0] / depth
    v = size / 2 - f * rel[1] / depth
    return u, v, depth


def measure(tasks: list[str], seeds: int) -> dict:
    import mujoco

    from wam.envs.metaworld import MetaWorldEnv
    from wam.evaluate import eval_seeds

    rows = {c: {s: {"object": [], "goal": [], "hand": []} for s in SIZES} for c in CAMERAS}
    for task in tasks:
        env = MetaWorldEnv(task, image_size=64)
        model, data = env._env.model, env._env.data
        for s in eval_seeds(0, task, seeds):
            obs, _ = env.reset(seed=s)
            full = obs["observation.environment_state"]
            points = {"hand": full[0:3], "object": full[4:7], "goal": full[36:39]}
            for cam in CAMERAS:
                name = cam.replace("-lerobot", "")
                cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
                saved = data.cam_xpos[cid].copy()
                if cam.endswith("-lerobot"):
                    data.cam_xpos[cid] = LEROBOT_CORNER2_POS
                for size in SIZES:
                    f = 0.5 * size / np.tan(np.deg2rad(model.cam_fovy[cid]) / 2)
                    for what, p in points.items():
                        u, v, depth = project(model, data, cid, p, size)
                        inside = depth > 0 and 0 <= u < size and 0 <= v < size
                        rows[cam][size][what].append(f * 0.04 / depth if inside else None)
                data.cam_xpos[cid] = saved
        env.close()
    out = {}
    for cam in CAMERAS:
        out[cam] = {}
        for size in SIZES:
            r = {}
            for what, vals in rows[cam][size].items():
                seen = [v for v in vals if v is not None]
                r[f"{what}_in_view"] = round(len(seen) / len(vals), 3)
                r[f"{what}_px"] = round(float(np.median(seen)), 2) if seen else None
            out[cam][str(size)] = r
    return out


def main() -> None:
    from wam.envs.metaworld import resolve_tasks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mt50")
    ap.add_argument("--seeds", type=int, default=10, help="layouts per task")
    ap.add_argument("--out", default="experiments/cameras/cameras.json")
    args = ap.parse_args()
    tasks = resolve_tasks(args.tasks)
    t0 = time.time()
    result = measure(tasks, args.seeds)
    print(
        f"{'camera':<17} {'px':>4} {'hand in view':>13} {'object in view':>15} {'4 cm at object':>15} "
        f"{'goal in view':>13} {'4 cm at goal':>13}"
    )
    for cam, by_size in result.items():
        for size, r in by_size.items():
            print(
                f"{cam:<17} {size:>4} {r['hand_in_view']:>13.0%} {r['object_in_view']:>15.0%} "
                f"{r['object_px'] or 0:>13.1f}px {r['goal_in_view']:>13.0%} {r['goal_px'] or 0:>11.1f}px"
            )
    with open(args.out, "w") as f:
        json.dump(
            {"tasks": tasks, "seeds_per_task": args.seeds, "seconds": round(time.time() - t0, 1), "cameras": result},
            f,
            indent=2,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
