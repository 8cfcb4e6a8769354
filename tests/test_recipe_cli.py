"""``parse_recipe``: the recipes' shared argument parsing (``recipes/*/train.py`` under ``accelerate launch``)."""

import sys

from weakstrong.recipe_cli import parse_recipe


def test_parse_recipe_without_argv_reads_the_process_command_line(monkeypatch, tmp_path):
    # recipes/wmss/train.py calls run_recipe(..., argv=None): the flags accelerate passes on must be read, not
    # silently replaced by the defaults (which load the embedded model instead of the requested one).
    from weakstrong.wmss.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["train.py", "--model_name_or_path", str(tmp_path / "tiny"),
                                      "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    _script, config, model_args = parse_recipe(build_parser(), None)
    assert model_args.model_name_or_path == str(tmp_path / "tiny")
    assert config.output_dir == str(tmp_path / "out")


def test_parse_recipe_with_an_explicit_empty_argv_ignores_the_process_command_line(monkeypatch, tmp_path):
    from weakstrong.wmss.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["train.py", "--model_name_or_path", "elsewhere"])
    _script, _config, model_args = parse_recipe(build_parser(), ["--output_dir", str(tmp_path / "o")])
    assert model_args.model_name_or_path != "elsewhere"
