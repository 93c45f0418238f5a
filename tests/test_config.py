"""Zoo configs: every YAML validates and builds; bad keys and types are named."""
import pytest
import yaml

from pocketdet.config import ConfigError, load_config, zoo_names
from pocketdet.models import build_model


@pytest.mark.parametrize("name", zoo_names())
def test_every_zoo_config_builds(name):
    cfg = load_config(name)
    m = build_model(cfg.model)
    assert m.num_classes == 80 and cfg.train.schedule.max_iters > 0


def test_ssdlite_recipe_is_the_spec():
    t = load_config("ssdlite_mnv3_large_320").train
    assert (t.batch_size, t.reference_batch, t.optimizer.lr, t.schedule.max_iters) == (64, 512, 0.4, 400000)
    assert (t.schedule.type, t.schedule.warmup_iters, t.optimizer.weight_decay) == ("cosine", 2000, 4e-5)


def _write(tmp_path, mutate):
    data = yaml.safe_load(open(load_config.__globals__["ZOO_DIR"] / "ssdlite_mnv3_small_320.yaml"))
    mutate(data)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_keys_and_wrong_types_are_named(tmp_path):
    p = _write(tmp_path, lambda d: d["train"].update(bach_size=3))
    with pytest.raises(ConfigError, match=r"(?s)c.yaml.*train.bach_size"):
        load_config(p)
    p = _write(tmp_path, lambda d: d["model"].update(widht=3))
    with pytest.raises(ConfigError, match=r"model.widht: unknown key"):
        load_config(p)
    p = _write(tmp_path, lambda d: d["train"]["optimizer"].update(lr="fast"))
    with pytest.raises(ConfigError, match=r"train.optimizer.lr"):
        load_config(p)
    p = _write(tmp_path, lambda d: d["model"].update(arch="nope"))
    with pytest.raises(ConfigError, match=r"unknown architecture 'nope'"):
        load_config(p)
    p.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
