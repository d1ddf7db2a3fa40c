"""One table of generation options, and every surface derived from it."""

import argparse
import dataclasses
import re

import pytest

from cln_textgen import options as table
from cln_textgen.config import Config, load_config
from cln_textgen.errors import UserError


def bad_value(option):
    """A value of the option's type that its rule refuses."""
    for value in (-1, 0, 2**31, 1.5, -0.5):
        value = option.type(value)
        if table.check(option.name, value):
            return value
    return None  # every value of the type is allowed (a true/false switch)


def parsed(command, argv):
    from cln_textgen.cli import build_parser

    return build_parser().parse_args([command, "--run", "r", *argv])


def test_every_surface_has_every_option_with_the_same_default():
    names = [o.name for o in table.OPTIONS]
    # the config's generate: section and the API's options are the table
    section = Config().generate
    assert [f.name for f in dataclasses.fields(section)] == names
    assert all(getattr(section, o.name) == o.default for o in table.OPTIONS)
    # the generate flags: all; evaluate: the sampling ones; unset means "the run's value"
    generate, evaluate = parsed("generate", []), parsed("evaluate", [])
    for o in table.OPTIONS:
        assert getattr(generate, o.name) is None
        assert hasattr(evaluate, o.name) == o.evaluate
    assert table.resolve(section, table.from_flags(generate)) == section


@pytest.mark.parametrize("option", [o for o in table.OPTIONS if bad_value(o) is not None],
                         ids=lambda o: o.name)
def test_every_surface_refuses_a_bad_value_with_the_tables_rule(option, tmp_path):
    value = bad_value(option)
    rule = option.rule
    # config file and --set
    with pytest.raises(UserError, match=re.escape(f"generate.{option.name}: {rule}")):
        load_config(None, [f"generate.{option.name}={value}"])
    # flags
    args = parsed("generate", [option.flag, str(value)])
    with pytest.raises(UserError, match=option.flag):
        table.resolve(table.GenerationOptions(), table.from_flags(args),
                      spell=table.as_flag)
    # the API (TextGenerator.options resolves the same way)
    with pytest.raises(UserError) as caught:
        table.resolve(table.GenerationOptions(), {option.name: value}, unknown=TypeError)
    assert rule in str(caught.value)


def test_every_option_reaches_the_engine_per_row_or_shapes_the_call():
    from cln_textgen.generation.engine import params_of

    params = params_of([table.GenerationOptions(top_k=3), table.GenerationOptions(top_p=0.5)])
    assert set(params) == {o.name for o in table.ROW_OPTIONS}
    assert params["top_k"].numpy().tolist() == [3, 0]
    assert {o.name for o in table.OPTIONS if not o.per_row} == {"num_beams", "batch_size"}


def test_unknown_options_and_contradictions():
    with pytest.raises(TypeError, match="unknown generation option 'topk'; did you mean 'top_k'"):
        table.resolve(table.GenerationOptions(), {"topk": 3}, unknown=TypeError)
    with pytest.raises(UserError, match="min_new_tokens=5 is above max_new_tokens=4"):
        table.resolve(table.GenerationOptions(), {"min_new_tokens": 5, "max_new_tokens": 4})
    with pytest.raises(UserError, match="generate: greedy and num_beams=2"):
        load_config(None, ["generate.greedy=true", "generate.num_beams=2"])
    assert table.default_n(table.GenerationOptions(num_beams=4)) == 4
    assert table.default_n(table.GenerationOptions(greedy=True)) == 1
    assert table.default_n(table.GenerationOptions()) == table.SAMPLES_DEFAULT


def test_a_boolean_flag_can_turn_a_runs_switch_off():
    parser = argparse.ArgumentParser()
    table.add_flags(parser)
    assert parser.parse_args(["--no-greedy"]).greedy is False
    assert parser.parse_args([]).greedy is None


def test_a_sweep_is_every_combination_in_table_order():
    from cln_textgen.options import sweep

    assert sweep({}) == [{}]
    settings = sweep({"temperature": [0.7, 1.0], "guidance": [1.0, 2.0, 2.0]})
    # the table lists temperature before guidance: it varies slowest
    assert settings == [{"temperature": 0.7, "guidance": 1.0}, {"temperature": 0.7, "guidance": 2.0},
                        {"temperature": 1.0, "guidance": 1.0}, {"temperature": 1.0, "guidance": 2.0}]
