"""Presets are deltas of shared defaults; overrides are validated with helpful errors."""

from __future__ import annotations

import argparse
import json
import typing

import pytest

from kaggle_utils.core import config, parameters, presets


def test_six_presets_follow_the_solution():
    fo, sp1, sp2, su = (presets.FULL_PRESETS[n] for n in ("fo", "sp1", "sp2", "su"))
    assert (fo.view, fo.n_frames, fo.img_size, fo.epochs, fo.condition) == ("t1", 24, 96, 32, "foraminal")
    assert (sp1.n_frames, sp1.img_size) == (8, 128)
    assert (sp2.n_frames, sp2.img_size) == (5, 256)
    assert (su.n_frames, su.img_size) == (24, 96)
    assert all(c.epochs == 40 and c.vflip and c.condition == "all" for c in (sp1, sp2, su))
    for name in ("stage1_t1", "stage1_t2"):
        s1 = presets.FULL_PRESETS[name]
        assert (s1.n_frames, s1.img_size, s1.epochs, s1.shift_limit, s1.stage) == (8, 256, 60, 0.10, 1)
    for cfg in presets.FULL_PRESETS.values():
        assert cfg.backbone == "hgnetv2_b5.ssld_stage2_ft_in1k"
        assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.grad_clip) == (1e-4, 1e-4, 32, 1.0)


def test_profiles_are_deltas_and_overrides_apply_last():
    demo = presets.preset("sp2", "demo", {"epochs": 3})
    assert demo.backbone != presets.FULL_PRESETS["sp2"].backbone and not demo.pretrained
    assert demo.epochs == 3 and demo.n_frames == 5  # untouched fields keep the preset's value


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(config.ConfigError, match="'epoch'.*epochs"):
        presets.preset("fo", overrides={"epoch": 2})
    with pytest.raises(config.ConfigError, match="unknown preset 'sp3'"):
        presets.preset("sp3")


def test_string_values_are_cast_to_the_field_type():
    cfg = config.apply_overrides(presets.FULL_PRESETS["fo"], {"epochs": "5", "amp": "false", "lr": "3e-4"})
    assert (cfg.epochs, cfg.amp, cfg.lr) == (5, False, 3e-4)
    with pytest.raises(config.ConfigError, match="epochs"):
        config.apply_overrides(cfg, {"epochs": "many"})


def test_sidecar_round_trip():
    cfg = presets.preset("su", "demo")
    assert presets.from_dict(config.to_dict(cfg)) == cfg


def test_notebook_params_read_the_environment(monkeypatch):
    monkeypatch.setenv("FOLDS", "[1, 2]")
    monkeypatch.setenv("WORK_DIR", "/somewhere")
    p = parameters.notebook_params(FOLDS=[0], WORK_DIR="", PROFILE="auto")
    assert (p.FOLDS, p.WORK_DIR, p.PROFILE) == ([1, 2], "/somewhere", "auto")
    monkeypatch.setenv("FOLDS", "[1,")
    with pytest.raises(config.ConfigError, match="FOLDS"):
        parameters.notebook_params(FOLDS=[0])


def test_round_two_fields_default_off_and_old_sidecars_still_load():
    cfg = presets.preset("sp1", "smoke")
    assert (cfg.noisy_labels, cfg.pseudo_labels, cfg.pseudo_weight) == ("", "", 0.5)
    old = {k: v for k, v in config.to_dict(cfg).items() if k not in ("noisy_labels", "pseudo_labels", "pseudo_weight")}
    assert presets.from_dict(old) == cfg
    assert config.apply_overrides(cfg, {"pseudo_weight": "0.25"}).pseudo_weight == 0.25


def test_command_line_overrides_merge_json_and_set_and_name_what_is_malformed():
    parser = argparse.ArgumentParser()
    parameters.add_override_arguments(parser)
    args = parser.parse_args(["--overrides", '{"epochs": 2, "lr": 0.1}', "--set", "lr=0.5"])
    assert parameters.parsed_overrides(args) == {"epochs": 2, "lr": "0.5"}  # --set wins; strings are cast on apply
    for argv, message in (
        (["--set", "epochs"], "--set takes KEY=VALUE, got epochs"),
        (["--overrides", "{epochs: 2}"], "--overrides is not valid JSON"),
        (["--overrides", "[1]"], "--overrides is not a JSON object"),
    ):
        with pytest.raises(config.ConfigError, match=message):
            parameters.parsed_overrides(parser.parse_args(argv))


def test_choices_are_the_registries_and_a_wrong_one_is_named():
    from kaggle_utils.core.labels import CONDITION_ROWS
    from kaggle_utils.core.views import VIEWS
    from kaggle_utils.models.networks import MODELS

    assert typing.get_args(config.ViewName) == tuple(VIEWS)
    assert typing.get_args(config.ModelName) == tuple(MODELS)
    assert typing.get_args(config.Condition) == tuple(CONDITION_ROWS)
    with pytest.raises(
        config.ConfigError, match=r"Stage2Config sp1 view='t22' is not one of t1, t2, axial; did you mean t2\?"
    ):
        presets.preset("sp1", overrides={"view": "t22"})
    wrong_model = "Stage1Config stage1_t1 model='keypoints' is not one of keypoint, keypoint_heatmap, sagittal"
    with pytest.raises(config.ConfigError, match=wrong_model):
        presets.preset("stage1_t1", overrides={"model": "keypoints"})
    with pytest.raises(config.ConfigError, match="amp_dtype='fp8' is not one of auto, bf16, fp16"):
        presets.preset("fo", overrides={"amp_dtype": "fp8"})
    with pytest.raises(config.ConfigError, match="routes="):
        presets.preset("su", overrides={"routes": [["lumbar", 1]]})


def test_routes_rank_the_presets_as_the_solution_and_survive_a_sidecar():
    routes = presets.preset_routes(presets.FULL_PRESETS[n] for n in presets.ALL_STAGE2_PRESETS)
    assert routes == {
        "fo": {"foraminal": 1},
        "fs": {"foraminal": 1},
        "sp1": {"spinal": 1, "subarticular": 2, "foraminal": 2},
        "sp2": {"spinal": 1, "subarticular": 2, "foraminal": 2},
        "su": {"spinal": 1, "subarticular": 1, "foraminal": 2},
        "ax": {
            "spinal": 1,
            "subarticular": 1,
        },  # ranked among the axial presets, then blended (kaggle_utils.inference.blend)
    }
    su = presets.FULL_PRESETS["su"]
    assert presets.from_dict(json.loads(json.dumps(config.to_dict(su)))) == su  # lists back into tuples
    old = {k: v for k, v in config.to_dict(su).items() if k != "routes"}  # a sidecar from before routes
    assert presets.from_dict(old).routes == su.routes
    assert presets.STAGE1_PRESETS == ("stage1_t1", "stage1_t2", "stage1_axial") and presets.STAGE2_PRESETS == (
        "fs",
        "sp1",
        "sp2",
        "su",
        "ax",
    )


def test_a_switch_given_as_text_is_read_as_a_switch(monkeypatch):
    for text, value in (("false", False), ("False", False), ("0", False), ("true", True), ("auto", "auto")):
        monkeypatch.setenv("RUN_CV", text)
        assert value == parameters.notebook_params(RUN_CV="auto").RUN_CV
    monkeypatch.setenv("RUN_CV", "maybe")
    with pytest.raises(config.ConfigError, match="RUN_CV='maybe': expected auto, true or false"):
        parameters.notebook_params(RUN_CV="auto")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FOLDS": "0"}, r"FOLDS=0: expected a list of fold numbers, e.g. \[0\]"),
        ({"FOLDS": "[-2]"}, r"FOLDS=\[-2\]: folds are 0, 1"),
        ({"PRESETS": '["zz"]'}, "unknown stage-2 preset 'zz'"),
        ({"VIEWS": '["t3"]'}, "unknown localiser view 't3'"),
        ({"PROFILE": "dmo"}, "unknown profile 'dmo'; did you mean demo"),
        ({"TRAIN_OVERRIDES": "[1]"}, r"TRAIN_OVERRIDES=\[1\]: expected a JSON object"),
        ({"WORKERS": "-1"}, "WORKERS=-1: expected a whole number >= 0"),
    ],
)
def test_notebook_parameters_are_checked_by_their_rule(monkeypatch, env, message):
    defaults = dict(FOLDS=[0], PRESETS=[], VIEWS=["t1"], PROFILE="auto", TRAIN_OVERRIDES={}, WORKERS=2)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(config.ConfigError, match=message):
        parameters.notebook_params(**defaults)
    with pytest.raises(config.ConfigError, match=message):
        parameters.check_parameters(env)


@pytest.mark.parametrize(
    ("cls", "key", "value", "message"),
    [
        (
            config.InferConfig,
            "tta_angles",
            0,
            r"InferConfig tta_angles=0 is not of type tuple, give a list such as \[0\]",
        ),
        (config.InferConfig, "tta_angles", [], r"tta_angles=\(\): expected at least one angle"),
        (config.InferConfig, "batch_size", 0, "InferConfig batch_size=0: expected a whole number >= 1"),
        (config.PreprocessConfig, "percentiles", [99, 1], "two percentiles, low < high"),
        (config.PreprocessConfig, "n_folds", 1, "n_folds=1: expected a whole number >= 2"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_named(cls, key, value, message):
    with pytest.raises(config.ConfigError, match=message):
        config.apply_overrides(cls(), {key: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "Stage2Config sp1 epochs=0: expected a whole number >= 1"),
        ({"batch_size": 0}, "Stage2Config sp1 batch_size=0: expected a whole number >= 1"),
        ({"epochs": 2.5}, "Stage2Config sp1 epochs=2.5 is not of type int"),
        ({"lr": True}, "Stage2Config sp1 lr=True is not of type int or float"),
        ({"mixup_p": 1.5}, "mixup_p=1.5: expected a share between 0 and 1"),
    ],
)
def test_a_training_value_out_of_its_range_stops_before_any_work(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        presets.preset("sp1", "demo", overrides)


def test_one_overrides_dict_serves_both_stages_and_an_unknown_key_is_named():
    overrides = {"cutmix_p": 0.2, "heatmap_sigma": 1.5, "epochs": 3}  # a stage-2 key, a stage-1 key, a shared one
    localiser, classifier = presets.preset("stage1_t1", "demo", overrides), presets.preset("sp1", "demo", overrides)
    assert (localiser.heatmap_sigma, localiser.epochs) == (1.5, 3) and not hasattr(localiser, "cutmix_p")
    assert (classifier.cutmix_p, classifier.epochs) == (0.2, 3)
    with pytest.raises(config.ConfigError, match="unknown training config key 'cutmixp'; did you mean cutmix_p"):
        presets.preset("stage1_t1", "demo", {"cutmixp": 0.2})
    parameters.check_parameters({"TRAIN_OVERRIDES": json.dumps(overrides), "PRESETS": '["fo"]', "PROFILE": "demo"})
