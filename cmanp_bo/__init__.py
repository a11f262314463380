"""cmanp-bo: Constant Memory Attentive Neural Processes as Bayesian-optimization surrogates."""

__version__ = "0.1.0"
