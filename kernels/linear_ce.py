"""PLACEHOLDER (torch only) until the chunked kernel lands: same signature."""

import torch
import torch.nn.functional as F


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``target``, and the count of
    correct argmax predictions (an int64 tensor), without keeping the full logits."""
    logits = F.linear(x, weight, bias)
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    valid = target != ignore_index
    n_correct = ((logits.argmax(-1) == target) & valid).sum()
    return loss, n_correct
