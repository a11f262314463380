"""Task samplers for meta-training."""

from cmanp_bo.priors.gp1d import KERNELS, Batch, GPSampler, exact_gp_log_likelihood

__all__ = ["KERNELS", "Batch", "GPSampler", "exact_gp_log_likelihood"]
from cmanp_bo.priors.bo import BOBatch, BOPriorSampler, bo_kernel  # noqa: E402

__all__ += ["BOBatch", "BOPriorSampler", "bo_kernel"]
