"""Each AWD-LSTM dropout against fastai's, in distribution, on the whole language model.

The masks come from different random streams, so no single forward can be compared; the
loss over many forwards can. One dropout at a time (the others off), same weights (scaled up
so that dropping a unit moves the loss), same batch, fresh state each forward: the mean loss
must agree within sampling error and its spread within 15%. A dropout applied in the wrong
place, with the wrong mask shape (per step instead of locked over time, per element instead
of per word) or without the 1/(1-p) rescale moves one of the two far past these bounds.
"""

import pytest
import torch
import torch.nn.functional as F

from fastulm.model import AWDLSTMConfig, get_language_model
from fastulm_testkit import fastai_weight_drop_off

pytestmark = pytest.mark.reference

V, SMALL = 50, dict(emb_sz=16, n_hid=24)
KINDS = ["embed_p", "input_p", "weight_p", "hidden_p", "output_p"]
N = 800


def losses(forward) -> torch.Tensor:
    with torch.no_grad():
        return torch.tensor([forward() for _ in range(N)])


@pytest.mark.parametrize("kind", KINDS)
def test_lm_dropout_matches_fastai_in_distribution(fastai_text, kind):
    ft = fastai_text
    sizes = {k: (0.4 if k == kind else 0.0) for k in KINDS}
    torch.manual_seed(0)
    ref = ft.get_language_model(
        ft.AWD_LSTM, V, config=dict(ft.awd_lstm_lm_config, **SMALL, **sizes), drop_mult=1.0
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(6)
    ours = get_language_model(V, AWDLSTMConfig.lm(1.0, **SMALL), **sizes)
    ours.load_state_dict(ref.state_dict())
    if kind != "weight_p":
        fastai_weight_drop_off(ref)
    ref.train()
    ours.train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(2, V, (4, 12), generator=g), torch.randint(2, V, (4, 12), generator=g)

    def ref_loss():
        ref.reset()
        return F.cross_entropy(ref(x)[0].reshape(-1, V), y.reshape(-1)).item()

    def our_loss():
        ours.reset()
        return ours.loss(x, y).loss.item()

    torch.manual_seed(1)
    a = losses(ref_loss)
    b = losses(our_loss)
    assert a.std() > 0.01  # the dropout really moves the loss
    z = (b.mean() - a.mean()) / (a.var() / N + b.var() / N).sqrt()
    assert abs(z) < 4, f"mean loss {b.mean():.5f} vs fastai {a.mean():.5f} (z = {z:.1f})"
    assert 0.85 < b.std() / a.std() < 1.15, f"spread {b.std():.5f} vs fastai {a.std():.5f}"
