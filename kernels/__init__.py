"""Memory-saving kernels, installed as ``fastulm.kernels``.

Each op lives in its own file with its Triton kernel, its autograd/custom_op wrapper and
an exact torch reference. ``FASTULM_KERNELS`` picks the path: ``triton``, ``torch`` or
``auto`` (Triton on CUDA, the memory-lean torch path on CPU).
"""

from fastulm.kernels.concat_pool import masked_concat_pool
from fastulm.kernels.forget_mult import forget_mult
from fastulm.kernels.linear_ce import linear_cross_entropy
from fastulm.kernels.weight_drop import weight_drop

__all__ = ["forget_mult", "linear_cross_entropy", "masked_concat_pool", "weight_drop"]
