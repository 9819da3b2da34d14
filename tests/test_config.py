import pytest
import yaml

from mnistdiff.config import (Config, config_from_dict, config_to_dict, dump_yaml, load_config)
from mnistdiff.errors import ConfigError

CONFIGS = ["configs/seed.yaml", "configs/tiny.yaml"]


def test_defaults_and_file(tmp_path):
    assert load_config() == Config()
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3.0e-4\nmodel:\n  channels: [16, 32]\n")
    cfg = load_config(p)
    assert cfg.train.lr == 3e-4 and cfg.model.channels == [16, 32]
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
    load_config(path)


def test_seed_recipe():
    cfg = load_config("configs/seed.yaml")
    assert (cfg.diffusion.timesteps, cfg.diffusion.schedule) == (500, "linear")
    assert (cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (1e-4, 0.02)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 128, 40)
    assert cfg.model.channels == [64, 128, 256] and cfg.model.emb_dim == 128


def test_overrides():
    cfg = load_config("configs/tiny.yaml", ["train.lr=2e-4", "model.channels=[32,64,128]",
                                            "data.root=/tmp/x", "train.compile=true"])
    assert cfg.train.lr == 2e-4  # YAML reads "2e-4" as a string; float fields accept it
    assert cfg.model.channels == [32, 64, 128]
    assert cfg.data.root == "/tmp/x" and cfg.train.compile is True
    assert load_config(None, ["train.amp=off"]).train.amp == "off"  # YAML reads off as false


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "unknown key 'train.lrr' (did you mean 'lr'?); valid keys of train: batch_size"),
    (["trian.lr=1"], "unknown section 'trian' (did you mean 'train'?)"),
    (["train.lr=abc"], "train.lr: got 'abc', expected a number"),
    (["train.batch_size=2.5"], "train.batch_size: got 2.5, expected an integer"),
    (["train.batch_size=0"], "train.batch_size: got 0, must be >= 1"),
    (["train.compile=maybe"], "train.compile: got 'maybe', expected true or false"),
    (["sample.sampler=euler"], "sample.sampler: got 'euler', expected one of 'ddpm', 'ddim', 'dpmpp'"),
    (["diffusion.label_dropout=1.5"], "diffusion.label_dropout: got 1.5, must be <= 1.0"),
    (["diffusion.beta_start=0"], "diffusion.beta_start: got 0, must be > 0.0"),
    (["model.channels=[8,16,32,64]"], "model.channels: got 4 levels"),
    (["model.channels=[8,x]"], "model.channels: got [8, 'x'], expected a non-empty list of integers"),
    (["sample.steps=900"], "sample.steps: got 900, must be <= diffusion.timesteps (500)"),
    (["diffusion.beta_start=0.5"], "diffusion.beta_start (0.5) must be smaller than"),
    (["train"], "override 'train' must look like section.key=value"),
    (["lr=1"], "override key 'lr' must look like section.key"),
    # issue 13: non-finite numbers and out-of-range floats
    (["train.lr=.nan"], "train.lr: got nan, must be a finite number"),
    (["train.lr=.inf"], "train.lr: got inf, must be a finite number"),
    (["train.lr=5"], "train.lr: got 5, must be <= 1.0"),
    (["train.ema_decay=.nan"], "train.ema_decay: got nan, must be a finite number"),
    (["train.ema_decay=1"], "train.ema_decay: got 1, must be < 1.0"),
    (["train.ema_rampup=-0.1"], "train.ema_rampup: got -0.1, must be >= 0.0 and <= 1.0"),
    (["train.grad_clip=-.inf"], "train.grad_clip: got -inf, must be a finite number"),
    (["train.weight_decay=.nan"], "train.weight_decay: got nan, must be a finite number"),
    (["diffusion.min_snr_gamma=.inf"], "diffusion.min_snr_gamma: got inf, must be a finite"),
    (["diffusion.beta_end=.nan"], "diffusion.beta_end: got nan, must be a finite number"),
    (["model.dropout=.nan"], "model.dropout: got nan, must be a finite number"),
    (["sample.guidance=.inf"], "sample.guidance: got inf, must be a finite number"),
    (["sample.eta=.nan"], "sample.eta: got nan, must be a finite number"),
    # issue 10: the guidance interval
    (["sample.guidance_interval=[0.2]"], "sample.guidance_interval: got [0.2], expected [lo, hi] "
                                         "with 0 <= lo <= hi <= 1"),
    (["sample.guidance_interval=[0.1,0.5,0.9]"], "sample.guidance_interval: got [0.1, 0.5, 0.9]"),
    (["sample.guidance_interval=[0.8,0.2]"], "sample.guidance_interval: got [0.8, 0.2], expected"),
    (["sample.guidance_interval=[0,1.5]"], "sample.guidance_interval: got [0, 1.5], must be <= 1.0"),
    (["sample.guidance_interval=[-0.1,1]"], "sample.guidance_interval: got [-0.1, 1], must be >= 0.0"),
    (["sample.guidance_interval=[0,.nan]"], "sample.guidance_interval: got [0, nan], must be a finite"),
    (["sample.guidance_interval=0.5"], "sample.guidance_interval: got 0.5, expected a non-empty list of "
                                       "numbers"),
    (["sample.guidance_interval=[a,b]"], "sample.guidance_interval: got ['a', 'b'], expected a"),
])
def test_validation_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
    bad.write_bytes(b"PK\x03\x04\x80\xff\xfe binary")  # issue 13: a checkpoint as --config
    with pytest.raises(ConfigError, match="not a YAML text file"):
        load_config(bad)
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS)
def test_round_trip_through_yaml(path):
    cfg = load_config(path, ["train.lr=5e-4"])
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_every_float_key_refuses_nan_and_inf():
    """issue 13: .nan and .inf pass every range comparison, so each float key checks finiteness."""
    import dataclasses
    import typing

    from mnistdiff.config import SECTIONS

    floats = [f"{name}.{f.name}" for name, cls in SECTIONS.items()
              for f in dataclasses.fields(cls) if typing.get_type_hints(cls)[f.name] is float]
    assert "train.lr" in floats and len(floats) >= 12
    for key in floats:
        for bad in (".nan", ".inf", "-.inf"):
            with pytest.raises(ConfigError, match="must be a finite number"):
                load_config(None, [f"{key}={bad}"])


def test_choices_come_from_the_registries(monkeypatch):
    """issue 12: data.DATASETS, diffusion.SCHEDULES / OBJECTIVES and samplers.SAMPLERS are the
    single source of the choices; the defaults are among them."""
    from mnistdiff import data, diffusion, samplers
    from mnistdiff.config import choices

    registries = {"data.dataset": data.DATASETS, "diffusion.schedule": diffusion.SCHEDULES,
                  "diffusion.objective": diffusion.OBJECTIVES, "sample.sampler": samplers.SAMPLERS}
    cfg = load_config(None)
    for key, registry in registries.items():
        assert choices(key) == list(registry)
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) in registry
    with pytest.raises(ConfigError, match="diffusion.objective: got 'x0', expected one of 'eps', 'v'$"):
        load_config(None, ["diffusion.objective=x0"])
    with pytest.raises(ConfigError, match="data.dataset: got 'kmnist', expected one of 'mnist', "
                                          "'fashion-mnist', 'folder', 'cifar10'$"):
        load_config(None, ["data.dataset=kmnist"])
    monkeypatch.setitem(samplers.SAMPLERS, "euler", samplers.ddim)  # a new entry is a new choice
    assert load_config(None, ["sample.sampler=euler"]).sample.sampler == "euler"


def test_the_config_module_stays_free_of_torch():
    import subprocess
    import sys

    code = ("import sys, mnistdiff.config as c; c.load_config(None, ['train.lr=2e-4']); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_the_guidance_interval_defaults_to_every_step():
    assert load_config(None).sample.guidance_interval == [0.0, 1.0]
    assert load_config(None, ["sample.guidance_interval=[0.1,0.8]"]).sample.guidance_interval == [0.1, 0.8]
    assert load_config(None, ["sample.guidance_interval=[0.3,0.3]"]).sample.guidance_interval == [0.3, 0.3]
    # a config (or checkpoint) written before the field existed reads as every step
    assert config_from_dict({"sample": {"guidance": 2.0}}).sample.guidance_interval == [0.0, 1.0]
