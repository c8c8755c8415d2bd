"""The autocast type follows the card's compute capability."""

from __future__ import annotations

import pytest
import torch

from kaggle_utils.core.devices import autocast_dtype


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_auto_precision_follows_the_compute_capability_not_is_bf16_supported(monkeypatch, capability, expected):
    """A T4 (7.5) reports bf16 as supported but only emulates it: it trains and predicts in fp16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype(torch.device("cuda", 0), enabled=True) == expected
    assert autocast_dtype(torch.device("cpu"), enabled=True) is None
