"""wam: world action models. One diffusion transformer that is a policy, a world model, an inverse
dynamics model, a video predictor and a joint video-action planner, chosen at inference by the noise
level given to each modality."""

from wam.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from wam.config import PRESETS, DataConfig, LossConfig, ModelConfig
from wam.model import WAM
from wam.modes import MODES, Mode, sample, training_loss
from wam.tokenizer import ConvAutoencoder, FrameTokenizer

__version__ = "0.1.0"

__all__ = [
    "WAM", "MODES", "Mode", "sample", "training_loss", "ModelConfig", "LossConfig", "DataConfig", "PRESETS",
    "ConvAutoencoder", "FrameTokenizer", "Checkpoint", "load_checkpoint", "save_checkpoint", "__version__",
]
