"""LeRobot datasets: reading (v3.0, v2.1), writing (v3.0), episode windows for training, checking.

    ds = LeRobotDataset("data/mt10")                        # metadata + numeric columns in memory
    windows = WindowDataset(ds, n_obs_steps=1, future_frames=2, future_stride=4, action_horizon=8,
                            image_size=64)                  # a torch Dataset of training examples
    norm = windows.normalizer                               # maps model actions back to env actions

Heavy modules (torch, PyAV, pyarrow) are imported by the functions that need them.
"""

from wam.data.lerobot import Episode, LeRobotDataset, read_info, read_meta
from wam.data.stats import Normalizer
from wam.data.writer import LeRobotWriter, infer_features, write_dataset
from wam.errors import DatasetError  # (wam.errors' class, the one wam.data raises)

__all__ = [
    "DatasetError",
    "Episode",
    "LeRobotDataset",
    "LeRobotWriter",
    "Normalizer",
    "WindowDataset",
    "check_dataset",
    "collate_windows",
    "infer_features",
    "read_info",
    "read_meta",
    "write_dataset",
]


def __getattr__(name: str):
    # WindowDataset needs torch and check_dataset PyAV: load them on first use only
    if name in ("WindowDataset", "collate_windows"):
        from wam.data import windows

        return getattr(windows, name)
    if name == "check_dataset":
        from wam.data.check import check_dataset

        return check_dataset
    raise AttributeError(f"module 'wam.data' has no attribute {name!r}")
