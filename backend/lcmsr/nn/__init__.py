"""The networks of LCMSR, in the paper's words; they know nothing of sampling."""
from .decoder import SRDecoder
from .denoiser import LatentDenoiser
from .encoder import CondNet, DiagonalGaussian, ResidualEncoder

__all__ = ["CondNet", "DiagonalGaussian", "LatentDenoiser", "ResidualEncoder", "SRDecoder"]
