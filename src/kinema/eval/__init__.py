"""Evaluation of samples."""

from .digits import DigitOracle

__all__ = ["DigitOracle"]
