"""Sagittal/axial blending: the combination rule, the severe boost, the fit and the saved settings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.core.constants import LEVEL_SLUGS, SEVERITY_COLUMNS, SEVERITY_WEIGHTS
from kaggle_utils.core.metric import score_parts
from kaggle_utils.core.paths import BLEND_FILE
from kaggle_utils.inference.blend import (
    BLEND_FAMILIES,
    SEVERE_BOOST,
    Blend,
    FamilyBlend,
    blend_rows,
    boost_max_severe,
    distance_shrink,
    fit_blend,
)

COLUMNS = list(SEVERITY_COLUMNS)
BLENDED_CONDITIONS = ("spinal_canal_stenosis", "left_subarticular_stenosis", "right_subarticular_stenosis")


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def frame(ids: list[str], probs: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame(np.asarray(probs, float), columns=COLUMNS)
    out.insert(0, "row_id", ids)
    return out


def random_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    return softmax(rng.normal(0, 1.5, (n, 3)))


def synthetic_oof(seed: int = 0, n_studies: int = 300, sigma: float = 2.0):
    """Labels drawn from softmax(z); sagittal sees z + N(0, sigma^2), axial z + N(0, sigma^2 / 3). The best linear
    estimate of z weights the views by inverse noise variance, so the best axial weight is 3 / (1 + 3) = 0.75."""
    rng = np.random.default_rng(seed)
    ids = [f"{s}_{c}_{lv}" for s in range(1, n_studies + 1) for c in BLENDED_CONDITIONS for lv in LEVEL_SLUGS]
    n = len(ids)
    z = rng.normal(0, 3.0, (n, 3))
    labels = (rng.random(n)[:, None] > np.cumsum(softmax(z), axis=1)).sum(axis=1)
    sagittal = frame(ids, softmax(z + rng.normal(0, sigma, (n, 3))))
    axial = frame(ids, softmax(z + rng.normal(0, sigma / np.sqrt(3), (n, 3))))
    solution = frame(ids, np.eye(3)[labels])
    solution["sample_weight"] = np.asarray(SEVERITY_WEIGHTS)[labels]
    return sagittal, axial, solution


def test_fit_recovers_the_inverse_variance_weight():
    sagittal, axial, solution = synthetic_oof()
    blend, report = fit_blend(sagittal, axial, solution)
    assert set(blend.families) == set(BLEND_FAMILIES)
    for family in BLEND_FAMILIES:
        assert blend.families[family].weight == pytest.approx(0.75, abs=0.1)
        row = report.set_index("family").loc[family]
        assert row["rows"] == (1500 if family == "spinal" else 3000)
        assert row["blended_loss"] <= min(row["sagittal_loss"], row["axial_loss"])
        assert row["axial_loss"] < row["sagittal_loss"]  # the less noisy view is better alone, too
    boost = report.set_index("family").loc["any_severe_boost"]
    assert blend.severe_boost == (boost["score_with_boost"] < boost["score_without_boost"])


def test_fit_without_axial_rows_keeps_sagittal():
    sagittal, _, solution = synthetic_oof(n_studies=5)
    empty = pd.DataFrame(columns=["row_id", *COLUMNS])
    blend, report = fit_blend(sagittal, empty, solution)
    assert all(fb == FamilyBlend(weight=0.0, temperature=1.0) for fb in blend.families.values())
    assert report.set_index("family").loc[list(BLEND_FAMILIES), "rows"].tolist() == [0, 0]
    unboosted = blend_rows(sagittal, empty, Blend(blend.families))
    np.testing.assert_allclose(unboosted[COLUMNS].to_numpy(), sagittal[COLUMNS].to_numpy(), atol=1e-6)


def test_weight_zero_gives_sagittal_one_gives_axial_and_missing_rows_keep_the_other_side():
    rng = np.random.default_rng(1)
    spinal = [f"7_spinal_canal_stenosis_{lv}" for lv in LEVEL_SLUGS]
    subarticular = [f"7_left_subarticular_stenosis_{lv}" for lv in LEVEL_SLUGS]
    foraminal = [f"7_left_neural_foraminal_narrowing_{lv}" for lv in LEVEL_SLUGS]
    sagittal = frame(spinal + subarticular + foraminal, random_probs(rng, 15))
    axial_ids = (
        spinal[:4]
        + subarticular[1:]
        + foraminal
        + ["8_spinal_canal_stenosis_l1_l2", "8_left_neural_foraminal_narrowing_l1_l2"]
    )
    axial = frame(axial_ids, random_probs(rng, len(axial_ids)))
    blend = Blend({"spinal": FamilyBlend(weight=0.0), "subarticular": FamilyBlend(weight=1.0, temperature=1.0)})

    out = blend_rows(sagittal, axial, blend)
    by_id, sag, ax = (f.set_index("row_id")[COLUMNS] for f in (out, sagittal, axial))
    # sagittal order, then the axial-only row of a blended family; the axial-only foraminal row is dropped
    assert out["row_id"].tolist() == sagittal["row_id"].tolist() + ["8_spinal_canal_stenosis_l1_l2"]
    np.testing.assert_allclose(out[COLUMNS].sum(axis=1), 1.0)
    np.testing.assert_allclose(by_id.loc[spinal], sag.loc[spinal], atol=1e-6)  # weight 0, even where axial exists
    np.testing.assert_allclose(by_id.loc[subarticular[1:]], ax.loc[subarticular[1:]], atol=1e-6)
    np.testing.assert_allclose(by_id.loc[subarticular[:1]], sag.loc[subarticular[:1]])  # no axial row
    np.testing.assert_allclose(by_id.loc[foraminal], sag.loc[foraminal])  # not a blended family
    np.testing.assert_allclose(by_id.loc[["8_spinal_canal_stenosis_l1_l2"]], ax.loc[["8_spinal_canal_stenosis_l1_l2"]])


def test_half_weight_is_the_normalised_geometric_mean():
    rng = np.random.default_rng(2)
    sag, ax = random_probs(rng, 6), random_probs(rng, 6)
    expected = np.sqrt(sag * ax)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(FamilyBlend(weight=0.5).apply(sag, ax), expected, rtol=1e-6)


def test_temperature_below_one_sharpens():
    rng = np.random.default_rng(3)
    sag, ax = random_probs(rng, 50), random_probs(rng, 50)
    plain = FamilyBlend(weight=0.3, temperature=1.0).apply(sag, ax)
    sharp = FamilyBlend(weight=0.3, temperature=0.7).apply(sag, ax)
    soft = FamilyBlend(weight=0.3, temperature=1.5).apply(sag, ax)
    assert (sharp.max(axis=1) > plain.max(axis=1)).all()
    assert (soft.max(axis=1) < plain.max(axis=1)).all()
    assert (sharp.argmax(axis=1) == plain.argmax(axis=1)).all()
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0)


def test_boost_changes_the_top_severe_spinal_row_of_each_study():
    rng = np.random.default_rng(4)
    ids = [f"{s}_{c}_{lv}" for s in (11, 12, 13) for c in BLENDED_CONDITIONS for lv in LEVEL_SLUGS]
    submission = frame(ids, random_probs(rng, len(ids)))
    submission.index = np.arange(len(ids))[::-1] * 10  # an arbitrary index must not matter
    before = submission.copy()

    boosted = boost_max_severe(submission)
    pd.testing.assert_frame_equal(submission, before)  # works on a copy
    changed = (boosted[COLUMNS] != submission[COLUMNS]).any(axis=1).to_numpy()
    assert changed.sum() == 3
    np.testing.assert_allclose(boosted[COLUMNS].sum(axis=1), 1.0)
    for study in ("11", "12", "13"):
        spinal = submission["row_id"].str.startswith(f"{study}_spinal_canal_stenosis").to_numpy()
        top = np.flatnonzero(spinal)[np.argmax(submission["severe"].to_numpy()[spinal])]
        assert np.flatnonzero(changed & spinal).tolist() == [top]
        old, new = submission.iloc[top][COLUMNS].to_numpy(float), boosted.iloc[top][COLUMNS].to_numpy(float)
        assert new[2] > old[2]
        np.testing.assert_allclose(new, old * [1, 1, SEVERE_BOOST] / (old * [1, 1, SEVERE_BOOST]).sum())

    via_blend = blend_rows(submission, submission.iloc[:0], Blend(severe_boost=True))
    np.testing.assert_allclose(via_blend[COLUMNS].to_numpy(), boosted[COLUMNS].to_numpy(), atol=1e-12)


def test_save_load_round_trip_and_bad_files(tmp_path):
    blend = Blend({"spinal": FamilyBlend(0.65, 0.9), "subarticular": FamilyBlend(0.4, 1.1)}, severe_boost=True)
    path = blend.save(tmp_path / BLEND_FILE)
    assert Blend.load(path) == blend
    assert Blend.from_dict(blend.to_dict()) == blend

    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        Blend.load(tmp_path / "nowhere.json")
    data = blend.to_dict()
    data["families"]["foraminal"] = {"weight": 0.5, "temperature": 1.0}
    (tmp_path / "family.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="foraminal"):
        Blend.load(tmp_path / "family.json")
    (tmp_path / "key.json").write_text(json.dumps({**blend.to_dict(), "boost_factor": 1.3}))
    with pytest.raises(ValueError, match="boost_factor"):
        Blend.load(tmp_path / "key.json")
    with pytest.raises(ValueError, match="weight"):
        FamilyBlend(weight=1.5)


def test_the_spinal_pair_minimises_the_spinal_and_any_severe_terms_together():
    """The fitted spinal weight and temperature are the grid's best for spinal + any-severe, scored by the metric."""
    sagittal, axial, solution = synthetic_oof(seed=0, n_studies=40, sigma=3.0)  # the spinal term alone: (0.75, 2.5)
    spinal = solution[solution.row_id.str.contains("spinal")]
    weights, temperatures = (0.0, 0.25, 0.5, 0.75, 1.0), (0.5, 0.7, 1.0, 1.5, 2.5)
    blend, _ = fit_blend(sagittal, axial, solution, weights, temperatures)

    def joint(weight: float, temperature: float) -> float:
        families = {"spinal": FamilyBlend(weight, temperature), "subarticular": FamilyBlend(0.0, 1.0)}
        parts = score_parts(spinal, blend_rows(sagittal, axial, Blend(families)))
        return parts["spinal"] + parts["any_severe_spinal"]

    grid = {(w, t): joint(w, t) for w in weights for t in temperatures}
    fitted = blend.families["spinal"]
    assert grid[fitted.weight, fitted.temperature] == pytest.approx(min(grid.values()))


def test_the_axial_weight_shrinks_with_the_distance_to_the_slice_plane():
    """Whole up to the training limit (3 mm), nothing from inference's (5 mm): a 4.9 mm match counts for little."""
    np.testing.assert_allclose(distance_shrink(np.array([0.5, 3.0, 4.0, 4.9, 6.0]), (3.0, 5.0)), [1, 1, 0.5, 0.05, 0])
    assert distance_shrink(np.array([4.9]), None) is None
    ids = ["1_spinal_canal_stenosis_l4_l5", "1_spinal_canal_stenosis_l5_s1"]
    sagittal = frame(ids, [[0.7, 0.2, 0.1]] * 2)
    axial = frame(ids, [[0.1, 0.2, 0.7]] * 2).assign(distance_mm=[0.5, 4.9])
    families = {"spinal": FamilyBlend(0.8, 1.0), "subarticular": FamilyBlend(0.5, 1.0)}
    near, far = blend_rows(sagittal, axial, Blend(families, distance_mm=(3.0, 5.0)))[COLUMNS].to_numpy()
    sag, ax = sagittal[COLUMNS].to_numpy()[:1], axial[COLUMNS].to_numpy()[:1]
    np.testing.assert_allclose(near, FamilyBlend(0.8, 1.0).apply(sag, ax)[0])
    np.testing.assert_allclose(far, FamilyBlend(0.8 * 0.05, 1.0).apply(sag, ax)[0])
    assert Blend.from_dict(Blend(families, distance_mm=(3.0, 5.0)).to_dict()).distance_mm == (3.0, 5.0)
