"""Training: stage 1 (residual autoencoder), stage 2 (latent consistency model) and the optional
stage 3 (the decoder aligned with the one-step sampler).

``train_autoencoder(opts, progress)``, ``train_consistency(opts, progress)`` and
``train_decoder(opts, progress)`` return a :class:`TrainResult`; checkpoints are
.safetensors + JSON, resumable exactly; ``torchrun`` runs them on several GPUs or
nodes (:mod:`.ddp`).
"""
from ..train_options import TrainOptions
from .loop import TrainingDiverged, TrainResult
from .stage1 import train_autoencoder
from .stage2 import train_consistency
from .stage3 import train_decoder

__all__ = ["TrainOptions", "TrainResult", "TrainingDiverged", "train_autoencoder", "train_consistency",
           "train_decoder"]
