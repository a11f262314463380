"""The CMANP network in plain PyTorch (no BoTorch import)."""

from cmanp_bo.nn.attention import AttentionStats, MultiHeadAttention
from cmanp_bo.nn.cmanp import CMAB, CMANP, CMANPConfig, ContextState
from cmanp_bo.nn.process import NeuralProcess

__all__ = [
    "AttentionStats",
    "CMAB",
    "CMANP",
    "CMANPConfig",
    "ContextState",
    "MultiHeadAttention",
    "NeuralProcess",
]
