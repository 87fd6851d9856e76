"""Evaluation of samples: Fréchet distance, FVD (I3D), Moving Digits oracle metrics, PSNR/SSIM."""

from .frames import BestOfN, best_of_n, psnr, ssim
from .frechet import FeatureStats, frechet_distance, frechet_distance_from_features
from .oracle import MOTION_FAULTS, DigitOracle, OracleResult

__all__ = ["DigitOracle", "MOTION_FAULTS", "OracleResult", "FeatureStats", "frechet_distance",
           "frechet_distance_from_features", "psnr", "ssim", "best_of_n", "BestOfN"]
