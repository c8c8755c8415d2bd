"""Models: shapes, masking, head layout, cutmix/mixup target semantics, backward; tiny timm backbone on CPU."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from kaggle_utils.core import config, presets
from kaggle_utils.core.constants import CONDITIONS, FORAMINAL_CONDITIONS, IGNORE_INDEX
from kaggle_utils.core.labels import condition_rows, left_right_pairs
from kaggle_utils.models.losses import gaussian_heatmaps, weighted_soft_cross_entropy
from kaggle_utils.models.networks import (
    MODELS,
    Attention,
    AttentionLSTM,
    AxialNet,
    FrameAttention2d,
    HeatmapKeypointNet,
    KeypointNet,
    SagittalNet,
    build_model,
    create_backbone,
    sequence_cutmix,
    soft_argmax,
)

B, LEVEL_SLUGS, FRAMES, SIZE = 2, 5, 4, 32
PRESET_OF_MODEL = {
    "keypoint": "stage1_t2",
    "keypoint_heatmap": "stage1_t2",
    "sagittal_1head": "fo",
    "sagittal_3heads": "sp1",
    "axial_crops": "ax",
}


def tiny(name: str, **changes) -> config.TrainConfig:
    return dataclasses.replace(
        presets.FULL_PRESETS[name],
        backbone="test_convnext",
        pretrained=False,
        img_size=SIZE,
        n_frames=FRAMES,
        drop_path_rate=0.0,
        **changes,
    )


def stage2_batch(n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.rand(B, LEVEL_SLUGS, FRAMES, 1, SIZE, SIZE)
    mask = torch.ones(B, FRAMES, dtype=torch.bool)
    mask[1, -1] = False
    target = torch.eye(3)[torch.randint(3, (B, LEVEL_SLUGS, n_rows))]
    return x, mask, target


def assert_valid_targets(target: torch.Tensor) -> None:
    ignored = (target == IGNORE_INDEX).all(dim=-1)
    assert ((target == IGNORE_INDEX).any(dim=-1) == ignored).all(), "a row is partly ignored"
    sums = target.sum(dim=-1)[~ignored]
    assert torch.allclose(sums, torch.ones_like(sums)) and (target[~ignored] >= 0).all()


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_model_builds_and_has_its_output_shape(model_name):
    cfg = tiny(PRESET_OF_MODEL[model_name], model=model_name)
    model = build_model(cfg).eval()
    with torch.no_grad():
        if cfg.stage == 1:
            out = model(torch.rand(B, FRAMES, 1, SIZE, SIZE), torch.ones(B, FRAMES, dtype=torch.bool))
            assert out.shape == (B, 10, 2) and ((out >= 0) & (out <= 1)).all()
        elif cfg.view == "axial":  # one level's three crops -> its three rows
            out = model(torch.rand(B, 3, FRAMES, 1, SIZE, SIZE), torch.ones(B, FRAMES, dtype=torch.bool))
            assert out["logits"].shape == (B, 1, 3, 3) and out["target"] is None
        else:
            n_rows = len(condition_rows(cfg.condition))
            x, mask, _ = stage2_batch(n_rows)
            out = model(x, mask)
            assert out["logits"].shape == (B, LEVEL_SLUGS, n_rows, 3) and out["target"] is None


def test_one_head_and_three_heads_layouts():
    one, three = SagittalNet(tiny("fo")), SagittalNet(tiny("sp1"))
    assert one.rows == FORAMINAL_CONDITIONS and list(one.pools) == ["foraminal"]
    assert three.rows == CONDITIONS and list(three.pools) == ["spinal", "foraminal", "subarticular"]
    assert [fc.out_features for fc in three.fcs.values()] == [3, 6, 6]
    assert left_right_pairs("foraminal") == one.left_right_pairs == ((0, 1),)
    assert left_right_pairs("all") == three.left_right_pairs == ((1, 2), (3, 4))


def test_unknown_model_and_condition_name_the_valid_ones():
    with pytest.raises(ValueError, match="sagittal_3heads"):
        build_model(tiny("sp1", model="sagittal_2heads"))
    with pytest.raises(ValueError, match="foraminal"):
        condition_rows("spinal")


def test_a_model_name_that_contradicts_the_condition_is_refused():
    with pytest.raises(ValueError, match="'sagittal_3heads' is for condition 'all'.*'foraminal'"):
        build_model(tiny("fo", model="sagittal_3heads"))
    with pytest.raises(ValueError, match="'sagittal_1head' is for condition 'foraminal'"):
        build_model(tiny("sp1", model="sagittal_1head"))


@pytest.mark.parametrize("stride", [1, 4])
def test_soft_argmax_recovers_a_known_peak(stride: int) -> None:
    """A sharp peak at cell (row 5, column 9) of a 16 x 12 map reads as that cell's centre pixel over the input
    size; a Gaussian between cells reads as its sub-cell centre."""
    logits = torch.full((1, 1, 12, 16), -1e4)
    logits[0, 0, 5, 9] = 0.0
    size_x, size_y = 16 * stride, 12 * stride
    centre = torch.tensor([9 * stride + (stride - 1) / 2, 5 * stride + (stride - 1) / 2])
    assert torch.allclose(soft_argmax(logits, stride)[0, 0], centre / torch.tensor([size_x, size_y]), atol=1e-6)
    point = torch.tensor([[[0.47, 0.52]]])  # far enough from the borders that the Gaussian is whole
    between = gaussian_heatmaps(point, (12, 16), stride, sigma=1.0).log()
    assert torch.allclose(soft_argmax(between, stride), point, atol=1e-4)


def test_frame_attention_2d_pools_each_location_from_its_own_frames() -> None:
    """Masked frames give nothing at any location; a location takes the frames' features with weights of its own."""
    pool = FrameAttention2d(4).eval()
    x, mask = torch.randn(2, 3, 4, 5, 5), torch.tensor([[True, True, False], [True, True, True]])
    changed = x.clone()
    changed[0, 2] = torch.randn(4, 5, 5) * 10
    with torch.no_grad():
        pooled = pool(x, mask)
        assert torch.allclose(pooled, pool(changed, mask), atol=1e-6)
        lo, hi = x[0, :2].min(dim=0).values, x[0, :2].max(dim=0).values  # a convex mix of the two valid frames
        assert ((pooled[0] >= lo - 1e-6) & (pooled[0] <= hi + 1e-6)).all()


def test_heatmap_head_reads_its_points_off_its_heatmaps_at_the_configured_stride() -> None:
    cfg = tiny("stage1_t2", model="keypoint_heatmap", heatmap_stride=4, decoder_dim=16)
    model = HeatmapKeypointNet(cfg).eval()
    with torch.no_grad():
        points, logits = model(torch.rand(B, FRAMES, 1, SIZE, SIZE), torch.ones(B, FRAMES, dtype=torch.bool), True)
    assert logits.shape == (B, 10, SIZE // 4, SIZE // 4)
    assert torch.allclose(points, soft_argmax(logits, 4))
    with pytest.raises(ValueError, match="heatmap_stride=3"):
        HeatmapKeypointNet(tiny("stage1_t2", model="keypoint_heatmap", heatmap_stride=3))


@pytest.mark.parametrize("pool", [Attention(8), AttentionLSTM(8)], ids=["attention", "attention_lstm"])
def test_masked_frames_do_not_change_the_pooled_output(pool):
    pool.eval()
    x = torch.randn(3, 6, 8)
    mask = torch.tensor([[True] * 6, [False, True, True, True, False, False], [True, False] * 3])
    changed = x.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 8) * 10
    with torch.no_grad():
        assert torch.allclose(pool(x, mask), pool(changed, mask), atol=1e-6)
        assert torch.isfinite(pool(x, torch.zeros_like(mask))).all()  # an all-masked row gives no NaN


def test_attention_lstm_can_feed_masked_frames_like_the_solution():
    pool = AttentionLSTM(8, zero_masked=False).eval()
    x, mask = torch.randn(1, 5, 8), torch.tensor([[True, True, True, False, False]])
    changed = x.clone()
    changed[0, 4] += 5
    with torch.no_grad():
        assert not torch.allclose(pool(x, mask), pool(changed, mask))  # the LSTM carries them backwards


def test_attention_lstm_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        AttentionLSTM(7)


def test_eval_mode_returns_the_target_unchanged():
    model = SagittalNet(tiny("sp1", cutmix_p=1.0, mixup_p=1.0)).eval()
    x, mask, target = stage2_batch(5)
    with torch.no_grad():
        assert torch.equal(model(x, mask, target)["target"], target)


@pytest.mark.parametrize("name", ["fo", "sp1"])
def test_training_mixes_keep_targets_valid(name):
    torch.manual_seed(0)
    model = SagittalNet(tiny(name, cutmix_p=0.5, mixup_p=0.5)).train()
    n_rows = len(model.rows)
    x, mask, target = stage2_batch(n_rows)
    target[0, 1, -1] = IGNORE_INDEX
    target[1, 3] = IGNORE_INDEX
    for _ in range(3):
        out = model(x, mask, target)
        assert out["logits"].shape == out["target"].shape == (B, LEVEL_SLUGS, n_rows, 3)
        assert_valid_targets(out["target"])


def test_sequence_cutmix_ties_the_first_half_to_the_left_labels():
    torch.manual_seed(0)
    n, f = 10, 5
    emb = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, f, 3).clone()
    mask = torch.rand(n, f) > 0.3
    target = torch.eye(3)[torch.randint(3, (n, 5))]
    right = torch.tensor([r.startswith("right_") for r in CONDITIONS])
    out_emb, out_mask, out_target, partner = sequence_cutmix(emb, mask, target, right, p=1.0)
    assert sorted(partner.tolist()) == list(range(n))  # one permutation of all rows
    half = f // 2  # odd F: the partner supplies the larger half, as in the solution
    assert torch.equal(out_emb[:, :half], emb[:, :half]) and torch.equal(out_mask[:, :half], mask[:, :half])
    assert torch.equal(out_emb[:, half:], emb[partner, half:]) and torch.equal(out_mask[:, half:], mask[partner, half:])
    assert torch.equal(out_target[:, ~right], target[:, ~right])  # spinal and left rows stay the row's own
    assert torch.equal(out_target[:, right], target[partner][:, right])


def test_model_cutmix_takes_all_right_rows_from_one_partner():
    torch.manual_seed(1)
    model = SagittalNet(tiny("sp1", cutmix_p=1.0, mixup_p=0.0)).train()
    x, mask, target = stage2_batch(5)
    # A distinct soft right-foraminal row per (study, level) identifies the partner of every row.
    a = torch.linspace(0.05, 0.95, B * LEVEL_SLUGS).view(B, LEVEL_SLUGS)
    target[:, :, 2] = torch.stack([a, 1 - a, torch.zeros_like(a)], dim=-1)
    out = model(x, mask, target)["target"].flatten(0, 1)
    flat = target.flatten(0, 1)
    assert torch.equal(out[:, [0, 1, 3]], flat[:, [0, 1, 3]])
    partner = [int((flat[:, 2, 0] - row[2, 0]).abs().argmin()) for row in out]
    assert sorted(partner) == list(range(B * LEVEL_SLUGS))
    assert torch.equal(out[:, [2, 4]], flat[partner][:, [2, 4]])


def test_model_mixup_mixes_whole_rows_with_the_previous_row():
    torch.manual_seed(2)
    model = SagittalNet(tiny("fo", cutmix_p=0.0, mixup_p=1.0)).train()
    x, mask, target = stage2_batch(2)
    target[1, 2, 0] = IGNORE_INDEX  # row 7 is not labelled: it and row 8 (whose partner it is) stay unmixed
    out = model(x, mask, target)["target"].flatten(0, 1)
    flat = target.flatten(0, 1)
    previous = flat.roll(1, 0)
    assert torch.equal(out[[7, 8]], flat[[7, 8]])
    mixed = [i for i in range(B * LEVEL_SLUGS) if i not in (7, 8) and not torch.equal(flat[i], previous[i])]
    gammas = []
    for i in mixed:
        diff = flat[i] - previous[i]
        k = int(diff.abs().flatten().argmax())
        gammas.append(float((out[i] - previous[i]).flatten()[k] / diff.flatten()[k]))
        assert torch.allclose(out[i], gammas[-1] * flat[i] + (1 - gammas[-1]) * previous[i], atol=1e-6)
    assert gammas and max(gammas) - min(gammas) < 1e-5  # one gamma per batch


@pytest.mark.parametrize("name", ["fo", "sp1"])
def test_backward_reaches_backbone_and_every_head(name):
    model = SagittalNet(tiny(name)).train()
    x, mask, target = stage2_batch(len(model.rows))
    out = model(x, mask, target)
    weighted_soft_cross_entropy(out["logits"], out["target"]).backward()
    assert all(p.grad is not None for p in model.fcs.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_keypoint_net_backward():
    model = KeypointNet(tiny("stage1_t2")).train()
    out = model(torch.rand(B, FRAMES, 1, SIZE, SIZE), torch.ones(B, FRAMES, dtype=torch.bool))
    (out - 0.5).abs().mean().backward()
    assert model.fc.weight.grad is not None


def test_backbone_loads_local_weights_with_rgb_folded_into_one_channel(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the file must be enough: Kaggle kernels have no hub access
    source = timm.create_model("test_convnext", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    backbone = create_backbone(tiny("sp1", weights_file=str(tmp_path / "weights.pth"), grad_checkpointing=True))
    assert torch.allclose(backbone.stem[0].weight, source.stem[0].weight.sum(dim=1, keepdim=True))
    assert backbone.num_features == 64


def test_gradient_checkpointing_changes_memory_not_results():
    torch.manual_seed(0)
    x, mask, target = stage2_batch(len(condition_rows("all")))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        cfg = tiny("sp1", grad_checkpointing=checkpointing, fc_dropout=0.0, cutmix_p=0.0, mixup_p=0.0)
        model = SagittalNet(cfg).train()
        weighted_soft_cross_entropy(model(x, mask, target)["logits"], target).backward()
        grads.append([p.grad.clone() for p in model.backbone.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "cutmix_p", "mixup_p"), [("fo", 1.0, 0.0), ("sp1", 1.0, 1.0), ("sp1", 0.0, 1.0)])
def test_pseudo_labels_beside_the_labels_mix_exactly_like_them(name, cutmix_p, mixup_p):
    """Labels and pseudo labels concatenated on the class axis: cutmix and mixup act alike on both blocks, so a pseudo
    block that is an affine function of the label block stays that function of the mixed labels."""
    torch.manual_seed(3)
    model = SagittalNet(tiny(name, cutmix_p=cutmix_p, mixup_p=mixup_p)).train()
    x, mask, target = stage2_batch(len(model.rows))
    pseudo = 0.7 * target + 0.1  # a valid soft target per row, distinct from the label
    out = model(x, mask, torch.cat([target, pseudo], dim=-1))
    assert out["target"].shape == (B, LEVEL_SLUGS, len(model.rows), 6) and out["logits"].shape[-1] == 3
    label, mixed_pseudo = out["target"].split(3, dim=-1)
    torch.testing.assert_close(mixed_pseudo, 0.7 * label + 0.1)
    assert not torch.equal(label, target)  # something did mix


def test_an_ignored_pseudo_row_is_never_mixed_into_another():
    torch.manual_seed(4)
    model = SagittalNet(tiny("fo", cutmix_p=0.0, mixup_p=1.0)).train()
    x, mask, target = stage2_batch(2)
    pseudo = target.clone()
    pseudo[0, 2] = IGNORE_INDEX  # row 2 has no OOF prediction: it and row 3 (whose partner it is) stay unmixed
    out = model(x, mask, torch.cat([target, pseudo], dim=-1))["target"].flatten(0, 1)
    flat = torch.cat([target, pseudo], dim=-1).flatten(0, 1)
    assert torch.equal(out[[2, 3]], flat[[2, 3]])
    assert_valid_targets(out[..., :3])
    assert_valid_targets(out[..., 3:])


def test_the_config_chooses_how_padded_frames_enter_the_lstm():
    assert all(pool.zero_masked for pool in SagittalNet(tiny("sp1")).pools.values())
    assert not any(pool.zero_masked for pool in SagittalNet(tiny("sp1", lstm_zero_masked=False)).pools.values())


def test_attention_scores_have_no_bias_and_older_checkpoints_still_load():
    """A constant added to every frame's score cancels in the softmax: such a parameter could only drift."""
    pool = Attention(8).eval()
    assert pool.score[-1].bias is None
    old = {**pool.state_dict(), "score.2.bias": torch.tensor([0.3])}  # as checkpoints before the change hold it
    loaded = Attention(8).eval()
    loaded.load_state_dict(old)  # strict: nothing missing, nothing unexpected
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded(x, mask), pool(x, mask))


def test_the_axial_model_reads_spinal_off_the_canal_and_one_head_serves_both_recesses():
    model = AxialNet(tiny("ax")).eval()
    assert model.rows == condition_rows("axial") and list(model.pools) == ["spinal", "subarticular"]
    canal, recess = torch.rand(2, FRAMES, 1, SIZE, SIZE)
    mask = torch.ones(1, FRAMES, dtype=torch.bool)
    with torch.no_grad():

        def logits(*crops: torch.Tensor) -> torch.Tensor:
            return model(torch.stack(crops)[None], mask)["logits"][0, 0]  # (3 rows, 3 classes)

        same = logits(canal, recess, recess)
        swapped = logits(canal, canal, recess)
        moved = logits(recess, canal, recess)
    torch.testing.assert_close(same[1], same[2])  # one recess image: one grade, on either side
    torch.testing.assert_close(swapped[0], same[0])  # the spinal row follows the canal crop alone
    torch.testing.assert_close(swapped[2], same[2])  # a side's row follows its own crop alone
    assert not torch.allclose(moved[0], same[0])


def test_the_axial_model_mixes_whole_levels_and_learns_through_every_head():
    torch.manual_seed(3)
    model = AxialNet(tiny("ax", mixup_p=1.0)).train()
    x, mask = torch.rand(4, 3, FRAMES, 1, SIZE, SIZE), torch.ones(4, FRAMES, dtype=torch.bool)
    target = torch.eye(3)[torch.randint(3, (4, 1, 3))]
    out = model(x, mask, target)
    assert out["target"].shape == (4, 1, 3, 3)
    assert_valid_targets(out["target"])
    weighted_soft_cross_entropy(out["logits"], out["target"]).backward()
    assert all(p.grad is not None for p in model.fcs.parameters())


def test_side_halves_read_each_side_from_its_own_half_of_the_slices():
    torch.manual_seed(3)
    model = SagittalNet(tiny("fo", side_halves=True)).eval()
    x, mask, _ = stage2_batch(2)
    mask[:] = True
    logits = model(x, mask)["logits"]
    changed = x.clone()
    changed[:, :, FRAMES // 2 :] = torch.rand_like(changed[:, :, FRAMES // 2 :])
    changed_logits = model(changed, mask)["logits"]
    assert torch.allclose(changed_logits[:, :, 0], logits[:, :, 0])  # the left row sees only the left half
    assert not torch.allclose(changed_logits[:, :, 1], logits[:, :, 1])
    # Reversed slices are the mirrored patient: the two rows swap, and nothing else changes.
    mirrored = model(x.flip(2), mask)["logits"]
    assert torch.allclose(mirrored, logits.flip(2), atol=1e-6)


def test_side_halves_give_an_odd_middle_frame_to_the_right_half_as_cutmix_does():
    from kaggle_utils.models.networks import side_halves

    emb = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    (left, left_mask), (right, right_mask) = side_halves(emb, torch.ones(1, 5, dtype=torch.bool))
    assert left.flatten().tolist() == [0, 1, 0] and left_mask.flatten().tolist() == [True, True, False]
    assert right.flatten().tolist() == [4, 3, 2] and right_mask.all()


@pytest.mark.parametrize("side_halves", [False, True])
def test_the_loss_sees_the_two_sides_labels_swapped(side_halves):
    """Swapping the two sides' labels changes the loss; with side halves, reversing the slices with them (the
    sequence flip) gives the loss back by construction (the solution's single pool has to learn that)."""
    torch.manual_seed(4)
    model = SagittalNet(tiny("fo", side_halves=side_halves)).eval()
    x, mask, target = stage2_batch(2)
    mask[:] = True
    target[..., 0, :], target[..., 1, :] = torch.eye(3)[0], torch.eye(3)[2]  # left Normal/Mild, right Severe
    swapped = target.flip(2)

    @torch.no_grad()
    def loss(images: torch.Tensor, labels: torch.Tensor) -> float:
        return float(weighted_soft_cross_entropy(model(images, mask)["logits"], labels))

    assert abs(loss(x, target) - loss(x, swapped)) > 1e-4
    if side_halves:
        assert loss(x.flip(2), swapped) == pytest.approx(loss(x, target), abs=1e-5)
