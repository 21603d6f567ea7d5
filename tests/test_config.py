"""Config files (TOML/YAML), validation with suggestions, command-line overrides, `config show`."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from cascade_ranking.cli import app
from cascade_ranking.experiments.config import BenchmarkConfig
from cascade_ranking.training.config import TrainConfig, config_from, read_config_file

runner = CliRunner()


def test_toml_and_yaml_files_with_command_line_overrides(tmp_path):
    (tmp_path / "a.toml").write_text('method = "bce"\nlr = 0.05\nkeep = [8, 5]\n[loss]\ntop_position = 3\n')
    (tmp_path / "a.yaml").write_text("method: bce\nlr: 0.05\nkeep: [8, 5]\nloss: {top_position: 3}\n")
    for name in ("a.toml", "a.yaml"):
        c = config_from(TrainConfig, tmp_path / name, {"lr": 0.2, "seed": None})
        assert (c.method, c.lr, c.keep, c.loss, c.seed) == ("bce", 0.2, [8, 5], {"top_position": 3}, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('metod = "bce"\n', r"unknown key 'metod'; did you mean 'method'\?"),
        ("lr = -1\n", "lr: Input should be greater than 0"),
        ('method = "nope"\n', "unknown method 'nope'"),
        ("lr = \n", "not a valid config file"),
        ("stages = 4\n", "stages: Input should be 2 or 3"),
    ],
)
def test_bad_config_files_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        config_from(TrainConfig, path, {})
    assert "bad.toml" in str(info.value)


def test_config_file_must_be_toml_or_yaml_mapping(tmp_path):
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match="expected a .toml, .yaml or .yml file"):
        read_config_file(tmp_path / "c.json")
    (tmp_path / "c.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        read_config_file(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_config_file(tmp_path / "missing.toml")


def test_benchmark_config_accepts_its_own_keys_only_there(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('methods = ["lcron", "bce"]\nrepeats = 2\n')
    assert config_from(BenchmarkConfig, path, {}).methods == ["lcron", "bce"]
    with pytest.raises(ValueError, match="unknown key 'methods'"):
        config_from(TrainConfig, path, {})


def test_train_from_a_config_file_saves_the_resolved_config(tmp_path, tiny_dataset):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"method": "bce", "data": str(tiny_dataset), "device": "cpu", "passes": 2}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(path), "--seed", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "bce" and saved["seed"] == 5 and saved["passes"] == 2
    assert saved["keep"] == [8, 5] and saved["batch_size"] == 16  # resolved from the dataset


def test_train_with_an_unknown_config_key_is_a_clear_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("bach_size = 10\n")
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'bach_size'; did you mean 'batch_size'?" in result.output


def test_config_show_prints_the_defaults_as_a_usable_file(tmp_path):
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    values = yaml.safe_load(result.stdout)
    assert values == TrainConfig().model_dump(mode="json")
    (tmp_path / "c.yaml").write_text(result.stdout)
    assert config_from(TrainConfig, tmp_path / "c.yaml", {}) == TrainConfig()
    bench = runner.invoke(app, ["config", "show", "--benchmark"])
    assert "repeats: 3" in bench.stdout


def test_set_overrides_any_option_between_the_file_and_the_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "arf", "loss": {"tau": 100, "extra": 1}, "emb_dim": 4, "lr": 0.5}))
    sets = ["emb_dim=16", "loss.tau=50", "keep=[30, 20]", "shuffle_window=null", "lr=0.1", "device=cpu"]
    c = config_from(TrainConfig, path, {"lr": 0.2}, sets)
    assert c.method == "arf" and c.emb_dim == 16 and c.keep == [30, 20] and c.shuffle_window is None
    assert c.loss == {"tau": 50, "extra": 1}  # a dotted key updates the file's mapping, key by key
    assert c.lr == 0.2 and c.device == "cpu"  # an explicit flag wins over --set
    assert config_from(BenchmarkConfig, None, {}, ["repeats=5", "methods=[lcron, bce]"]).methods == ["lcron", "bce"]


@pytest.mark.parametrize(
    "item,message",
    [
        ("emb_dimm=16", "unknown key 'emb_dimm'; did you mean 'emb_dim'"),
        ("emb_dim", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("keep=[30, 20", "cannot read the value"),
        ("passes=0", "passes: Input should be greater than 0"),
        ("emb_dim=abc", "emb_dim: Input should be a valid integer"),
    ],
)
def test_bad_set_items_are_clear_errors(item, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        config_from(TrainConfig, None, {}, [item])


def test_train_with_set_saves_the_options(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(out), "--device", "cpu", "--passes", "1",
            "--set", "emb_dim=4", "--set", "shuffle_window=16", "--set", "hidden=8"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["emb_dim"], saved["shuffle_window"], saved["hidden"]) == (4, 16, 8)
    bad = runner.invoke(app, ["train", "--data", str(tiny_dataset), "--set", "hiden=8"])
    assert bad.exit_code != 0 and "did you mean 'hidden'" in bad.output
