"""Training: stage 1 (residual autoencoder) and stage 2 (latent consistency model).

``train_autoencoder(opts, progress)`` and ``train_consistency(opts, progress)``
return a :class:`TrainResult`; checkpoints are .safetensors + JSON, resumable
exactly; ``torchrun`` runs them on several GPUs or nodes (:mod:`.ddp`).
"""
from .loop import TrainingDiverged, TrainOptions, TrainResult
from .stage1 import train_autoencoder
from .stage2 import train_consistency

__all__ = ["TrainOptions", "TrainResult", "TrainingDiverged", "train_autoencoder", "train_consistency"]
