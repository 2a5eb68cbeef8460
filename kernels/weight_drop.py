"""PLACEHOLDER (torch only) until the Triton kernel lands: same signature."""

import torch


def weight_drop(weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """DropConnect on a weight matrix; the mask is a pure function of ``seed``."""
    if p == 0.0:
        return weight
    g = torch.Generator(device=weight.device).manual_seed(seed)
    keep = torch.rand(weight.shape, generator=g, device=weight.device) >= p
    return weight * keep / (1 - p)
