"""The pretraining engine: config, data stream, training loop, checkpoints, DDP."""

from tapct_app.train.config import PretrainConfig

__all__ = ["PretrainConfig"]
