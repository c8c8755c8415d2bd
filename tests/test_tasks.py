"""The stage tasks: the classifier's label and pseudo-label loss, the keypoint metrics."""

from __future__ import annotations

import pytest
import torch

from kaggle_utils.core.config import TrainConfig
from kaggle_utils.core.presets import preset
from kaggle_utils.models.losses import weighted_soft_cross_entropy
from kaggle_utils.models.networks import build_model
from kaggle_utils.training.tasks import ClassifierTask, keypoint_metrics


def _pseudo_batch(cfg: TrainConfig) -> dict:
    generator = torch.Generator().manual_seed(5)
    rows = 2 if cfg.condition == "foraminal" else 5
    return {
        "image": torch.randint(0, 255, (2, 5, cfg.n_frames, 40, 40), dtype=torch.uint8, generator=generator),
        "mask": torch.ones(2, cfg.n_frames, dtype=torch.bool),
        "target": torch.eye(3)[torch.randint(3, (2, 5, rows), generator=generator)],
        "pseudo": torch.rand(2, 5, rows, 3, generator=generator).softmax(-1),
    }


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_classifier_loss_mixes_label_and_pseudo_label_losses(weight: float) -> None:
    """Without mixing augmentations, the training loss with pseudo labels is the weighted sum of the two losses."""
    cfg = preset("fo", "smoke", {"cutmix_p": 0.0, "mixup_p": 0.0, "pseudo_weight": weight})
    task = ClassifierTask(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # no dropout: the two forward passes below see the same network
    batch = _pseudo_batch(cfg)
    torch.manual_seed(1)
    loss, _ = task.loss(model, batch, train=True)
    torch.manual_seed(1)  # the same augmentation draw
    image, mask, target = task.inputs(batch, train=True)
    logits = model(image, mask)["logits"]
    expected = (1 - weight) * weighted_soft_cross_entropy(logits, target) + weight * weighted_soft_cross_entropy(
        logits, batch["pseudo"]
    )
    torch.testing.assert_close(loss, expected)
    torch.manual_seed(1)
    plain, _ = task.loss(model, {k: v for k, v in batch.items() if k != "pseudo"}, train=True)
    torch.testing.assert_close(plain, weighted_soft_cross_entropy(logits, target))


def test_keypoint_metrics_count_points_in_pixels_and_coordinates_in_shares_of_the_image() -> None:
    target = torch.full((1, 4, 2), 0.5)
    # per point (x, y) errors in relative units: none, 0.004 in x, 0.03 in both, 0.1 in y
    pred = target + torch.tensor([[[0.0, 0.0], [0.004, 0.0], [0.03, 0.03], [0.0, 0.1]]])
    metrics = keypoint_metrics(pred, target)
    distances = torch.tensor([0.0, 0.004, 0.03 * 2**0.5, 0.1]) * 256  # 0, 1.0, 10.9, 25.6 px
    assert metrics["mean_px"] == pytest.approx(float(distances.mean()), rel=1e-5)
    assert metrics["within_5px"] == pytest.approx(2 / 4)
    assert metrics["within_1pct"] == pytest.approx(5 / 8)  # coordinates: 0, 0, .004, 0, .03, .03, 0, .1
    assert metrics["within_5pct"] == pytest.approx(7 / 8)
    assert metrics["loss"] == pytest.approx((0.004 + 0.06 + 0.1) / 8, rel=1e-5)
