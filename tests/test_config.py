import pytest
import yaml

from cln_textgen.config import Config, config_from_dict, load_config, parse_override
from cln_textgen.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_layers_defaults_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "run_dir: runs/a\ntrain:\n  batch_size: 8\n  epochs: 2\n")
    config = load_config(path, ["train.epochs=5", "model.dropout=0"])
    assert config.run_dir == "runs/a"
    assert config.train.batch_size == 8  # file
    assert config.train.epochs == 5  # override wins over file
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)
    assert config.train.learning_rate == Config().train.learning_rate  # default


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = write(tmp_path, "run_dir: x\ntrain:\n  epochs: 2\n  bach_size: 3\n")
    with pytest.raises(UserError, match=r"c.yaml:4: unknown key 'train.bach_size'; did you mean "
                                        r"'train.batch_size'\?"):
        load_config(path)
    with pytest.raises(UserError, match=r"unknown section 'modle'; did you mean 'model'\?"):
        load_config(None, ["modle.dropout=0.1"])


def test_wrong_types_name_the_key(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml:2: data.max_length must be an integer, got 1.5"):
        load_config(write(tmp_path, "data:\n  max_length: 1.5\n"))
    with pytest.raises(UserError, match=r"train.batch_size must be an integer, got 'abc'"):
        load_config(None, ["train.batch_size=abc"])
    with pytest.raises(UserError, match=r"model.conditional must be true/false"):
        load_config(None, ["model.conditional=maybe"])
    with pytest.raises(UserError, match=r"train is a section"):
        load_config(None, ["train=3"])


def test_invalid_values(tmp_path):
    with pytest.raises(UserError, match=r"train.batch_size: must be > 0"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(UserError, match=r"model.format: 'onnx' is not one of auto, google, hf"):
        load_config(None, ["model.format=onnx"])
    with pytest.raises(UserError, match=r"model.init: 'scratch' is not one of pretrained, random"):
        load_config(None, ["model.init=scratch"])
    with pytest.raises(UserError, match=r"model.dropout: must be in \[0, 1\)"):
        load_config(None, ["model.dropout=1.5"])
    with pytest.raises(UserError, match=r"data.labels: lists a label twice"):
        load_config(None, ["data.labels=[a, a]"])


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "run_dir: x\ntrain: [1,\n"))
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_override_values_are_yaml_scalars():
    assert parse_override("train.max_steps=null") == ("train.max_steps", None)
    assert parse_override("data.labels=[neg, pos]") == ("data.labels", ["neg", "pos"])
    assert parse_override("model.pretrained=/a/b=c") == ("model.pretrained", "/a/b=c")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_override("train.epochs")


def test_numeric_labels_become_strings():
    assert load_config(None, ["data.labels=[0, 1]"]).data.labels == ["0", "1"]


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["train.epochs=7", "data.labels=[a, b]", "model.cond_hidden_units=4"])
    again = config_from_dict(yaml.safe_load(config.to_yaml()), "saved")
    assert again == config
    path = write(tmp_path, config.to_yaml())
    assert load_config(path) == config


def test_example_configs_load():
    from pathlib import Path

    from cln_textgen.pretrain_config import load_pretrain_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ holds the example configs"
    for path in configs:  # pretrain_*.yaml: configs of `cln-textgen pretrain`
        (load_pretrain_config if path.name.startswith("pretrain_") else load_config)(path)


def test_the_classifier_has_its_own_strict_section(tmp_path):
    config = load_config(write(tmp_path, "train:\n  learning_rate: 0.01\nclassifier:\n  epochs: 1\n"))
    assert (config.classifier.epochs, config.classifier.learning_rate) == (1, 5e-5)
    assert config.train.learning_rate == 0.01  # the generator's rate is not the judge's
    with pytest.raises(UserError, match=r"unknown key 'classifier.learning_rte'; did you mean "
                                        r"'classifier.learning_rate'\?"):
        load_config(None, ["classifier.learning_rte=1e-5"])
    with pytest.raises(UserError, match=r"classifier.epochs: must be > 0"):
        load_config(None, ["classifier.epochs=0"])


@pytest.mark.parametrize("text,message", [
    # nested aliases ("billion laughs"): refused before anything expands
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
     + "run_dir: *i\n", ":2: invalid YAML (aliases (*a) are not allowed"),
    ("run_dir: &r [*r]\n", ":1: invalid YAML (aliases (*r) are not allowed"),  # recursive
    ("run_dir: !!python/object/apply:os.system [echo hi]\n", "invalid YAML (could not determine "
                                                             "a constructor"),
    ("data:\n  labels: [" + ", ".join(["x"] * 20_000) + "]\n", "invalid YAML (more than 10000 values"),
])
def test_hostile_yaml_is_one_short_line(tmp_path, text, message):
    import resource
    import time

    started = time.process_time()  # CPU time: what expanding would cost, whatever the load
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert time.process_time() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_long_values_are_shortened_in_errors(tmp_path):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, "train:\n  epochs: [" + ", ".join(["1"] * 5000) + "]\n"))
    assert "train.epochs must be an integer, got [1, 1," in str(e.value)
    assert len(str(e.value)) < 200
    with pytest.raises(UserError, match="aliases"):  # --set values go through the same loader
        parse_override("run_dir=&a [*a]")


def test_a_run_config_with_aliases_is_refused(tmp_path):
    from cln_textgen.runs.folder import RunDir

    run = RunDir(tmp_path)
    run.config.write_text("run_dir: &r [*r]\n", encoding="utf-8")
    with pytest.raises(UserError, match="config.yaml:1: invalid YAML"):
        run.read_config()
