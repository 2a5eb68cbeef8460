"""PLACEHOLDER (torch only) until the Triton kernel lands: same signature."""

import torch


def masked_concat_pool(output: torch.Tensor, mask: torch.Tensor, bptt: int) -> torch.Tensor:
    """[last, max, mean] over the non-pad positions of each row; mask is True at pads."""
    lens = output.shape[1] - mask.long().sum(dim=1)
    last_lens = mask[:, -bptt:].long().sum(dim=1)
    avg = output.masked_fill(mask[:, :, None], 0).sum(dim=1) / lens.type(output.dtype)[:, None]
    mx = output.masked_fill(mask[:, :, None], -float("inf")).max(dim=1)[0]
    last = output[torch.arange(output.shape[0], device=output.device), -last_lens - 1]
    return torch.cat([last, mx, avg], 1)
