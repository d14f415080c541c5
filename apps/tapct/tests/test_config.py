"""Config loading: shipped configs, files, overrides, errors naming the key."""

from __future__ import annotations

import attrs
import pytest
from tapct_app.config_file import (
    apply_overrides,
    config_to_dict,
    list_shipped_configs,
    load_config,
    shipped_config_path,
    structure,
)
from tapct_app.errors import UserError
from tapct_app.pretrain import resolve_pretrain_config
from tapct_app.train.config import PretrainConfig


def test_shipped_configs_are_listed():
    assert {"demo", "tap_b_3d", "tap_s_3d"} <= set(list_shipped_configs())


@pytest.mark.parametrize("name", list_shipped_configs())
def test_every_shipped_config_loads_and_builds_library_configs(name):
    # resolve_pretrain_config also builds tapct_ssl.OptimConfig / DINOv2ObjectiveConfig.
    cfg = resolve_pretrain_config(name, [])
    assert isinstance(cfg, PretrainConfig)
    roundtrip = structure(PretrainConfig, config_to_dict(cfg))
    assert roundtrip == cfg


def test_tap_b_3d_config_has_table7_values():
    from tapct_app.train.build import build_optim_config, objective_config

    cfg = resolve_pretrain_config("tap_b_3d", ["/scans"])
    assert cfg.model.name == "tap_b_3d" and cfg.model.drop_path_rate == 0.2
    assert cfg.train.iterations == 125_000
    assert cfg.crops.global_crops_size == (12, 224, 224)
    assert cfg.crops.local_crops_size == (12, 96, 96)
    assert cfg.crops.global_crops_scale == (0.32, 1.0)
    assert cfg.crops.local_crops_scale == (0.05, 0.32)
    assert cfg.masking.mask_probability == 0.5 and cfg.masking.mask_ratio == (0.1, 0.5)
    o = build_optim_config(cfg)
    assert (o.base_lr, o.weight_decay, o.weight_decay_end) == (0.0035, 0.04, 0.4)
    assert (o.momentum_teacher, o.final_momentum_teacher) == (0.992, 1.0)
    assert (o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_iters) == (
        0.04, 0.07, 37_500)
    assert o.clip_grad == 3.0 and o.layerwise_decay == 0.9
    ob = objective_config(cfg)
    assert (ob.dino_loss_weight, ob.ibot_loss_weight, ob.koleo_loss_weight) == (1.0, 1.0, 0.1)
    assert ob.dino_head_n_prototypes == 65536 and ob.dino_head_hidden_dim == 2048
    assert ob.dino_head_bottleneck_dim == 256 and ob.dino_head_nlayers == 3
    assert ob.centering == "centering"
    # the paper's layout: 2048 on 8 GPUs = 256 per GPU per step, here 8 x 32 with every
    # 4th block checkpointed (the modelled >= 60 samples/s that fits 80 GB)
    assert cfg.train.global_batch(world_size=8) == 2048
    assert (cfg.train.batch_size, cfg.train.accumulation_steps) == (32, 8)
    assert cfg.model.grad_checkpointing == 4 and cfg.train.compile is False


def test_defaults_without_config_pick_demo_or_paper():
    assert resolve_pretrain_config(None, []).model.name == "tap_nano_3d"
    assert resolve_pretrain_config(None, ["/x"]).model.name == "tap_b_3d"


def test_cli_options_and_set_overrides_win():
    cfg = resolve_pretrain_config(
        "demo", [], preset="tap_micro_3d", iterations=7, batch_size=3, seed=5,
        overrides=["optim.base_lr=0.5", "crops.local_crops_number=2"],
    )
    assert cfg.model.name == "tap_micro_3d"
    assert (cfg.train.iterations, cfg.train.batch_size, cfg.seed) == (7, 3, 5)
    assert cfg.optim["base_lr"] == 0.5 and cfg.crops.local_crops_number == 2


def test_toml_file(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('seed = 3\n[train]\niterations = 11\n[crops]\nglobal_crops_size = [8, 64, 64]\n'
                 'local_crops_size = [8, 32, 32]\n[data]\nslab_depth = 8\n')
    cfg = load_config(PretrainConfig, f)
    assert cfg.seed == 3 and cfg.train.iterations == 11
    assert cfg.crops.global_crops_size == (8, 64, 64)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.iteratons=5"], "unknown key(s) ['iteratons']"),
        (["train.iterations=0"], "iterations must be positive"),
        (["crops.local_crops_size=[4,32,32]"], "keep the global crops' depth"),
        (["masking.mask_ratio=[0.5,0.1]"], "min <= max"),
        (["optim.base_lrr=1"], "optim: unknown key(s) ['base_lrr']; known: ["),
        # A misspelt key of a library section is named like the app's own (fresh user,
        # issue 12: it leaked "__init__() got an unexpected keyword argument").
        (["objective.dino_head_mlp_biass=false"],
         "objective: unknown key(s) ['dino_head_mlp_biass']; known: ['center_momentum'"),
        (["objective.centering=bogus"], "config section 'objective'"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(overrides, needle):
    with pytest.raises(UserError) as info:
        resolve_pretrain_config("demo", [], overrides=overrides)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="cannot read config"):
        load_config(PretrainConfig, bad)
    with pytest.raises(UserError, match="unknown config 'nonexistent'"):
        load_config(PretrainConfig, "nonexistent")


def test_apply_overrides_rejects_garbage():
    with pytest.raises(UserError, match=r"expected section\.key=value"):
        apply_overrides({}, ["novalue"])


def test_cpu_small_differs_from_the_paper_only_where_its_comments_say():
    """cpu_small (issue 12) keeps the paper's optimiser and objective except the listed keys."""
    from tapct_app.train.build import build_optim_config, objective_config
    from tapct_ssl import DINOv2ObjectiveConfig, OptimConfig

    def changed(config, paper):
        return {f.name for f in attrs.fields(type(paper))
                if getattr(config, f.name) != getattr(paper, f.name)}  # fmt: skip

    cfg = resolve_pretrain_config("cpu_small", ["/scans"])
    optim = build_optim_config(cfg)
    assert changed(optim, OptimConfig()) == {"base_lr", "warmup_teacher_temp", "teacher_temp"}
    assert (optim.warmup_teacher_temp, optim.teacher_temp) == (0.005, 0.01)
    assert changed(objective_config(cfg), DINOv2ObjectiveConfig()) == {"centering"} | {
        f"{head}_head_{key}" for head in ("dino", "ibot")
        for key in ("n_prototypes", "hidden_dim", "bottleneck_dim")
    }  # fmt: skip
    assert cfg.model.name == "tap_nano_3d" and cfg.train.iterations == 12_000
    text = shipped_config_path("cpu_small").read_text()
    for key in ("teacher_temp", "n_prototypes", "centering", "base_lr", "hidden_dim"):
        assert key in text  # each difference is written down where it is set
