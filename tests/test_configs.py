"""Every file in configs/ runs with today's flags: its commands, their flags and its values."""

from __future__ import annotations

import ast
import glob
import json
import os
import shlex

import pytest

from pipelines import options
from trainer import flags, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.json")))
# A configs/ file's keys besides the commands' flags (pipelines/cli.py: one object per command).
ABOUT_KEYS = {"description", "run", "expected", "reproduce", "hyperparameters"}
COMMANDS = {options.CONFIG_SECTION, *flags.COMMANDS}


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _parse(command: str) -> None:
    """Parses a facepipe command line (``python -m pipelines.preprocess …`` or ``python -m
    trainer.task …``) as the command itself would, without running it (exit 2 on a mistake)."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    if argv[2] == "pipelines.preprocess":
        _, beam_args = options.parse_flags(argv[3:])
        assert beam_args == [], command
    else:
        assert argv[2] == "trainer.task", command
        flags.parse_args(argv[3:])


def _script_flags(command: str) -> tuple[list[str], set[str]]:
    """The flags a ``reproduce`` command passes, and those its script or module declares."""
    argv = shlex.split(command)
    if argv[1] == "-m":
        source = os.path.join(ROOT, *argv[2].split("."))
        source = source + ".py" if os.path.exists(source + ".py") else os.path.join(source, "__main__.py")
        args = argv[3:]
    else:
        source, args = os.path.join(ROOT, argv[1]), argv[2:]
    with open(source) as f:
        tree = ast.parse(f.read())
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "add_argument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")], declared


def test_there_is_a_config_per_documented_data_set():
    assert {os.path.basename(path) for path in CONFIGS} >= {
        "kaggle_glasses.json",
        "face2comics.json",
        "orl_glasses.json",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_a_config_says_how_to_run_it_and_what_it_gives(path):
    config = _load(path)
    assert set(config) <= ABOUT_KEYS | COMMANDS, f"{path}: keys that are neither a command nor {ABOUT_KEYS}"
    assert config["description"] and config["expected"]["source"].startswith("docs/benchmarks.md")
    named = set()
    for command in config["run"]:
        argv = shlex.split(command)
        name = argv[2].split(".")[-1] if argv[2] == "pipelines.preprocess" else argv[3]
        named.add(name)
        # One command per stage, all of whose flags come from this file unless it adds some.
        assert argv[argv.index("--config") + 1] == os.path.relpath(path, ROOT), command
    assert named == set(config) & COMMANDS, f"{path}: a command without its flags, or flags no command uses"


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_a_configs_commands_parse_against_todays_flags(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # The commands name the file from the project's root.
    for command in _load(path)["run"]:
        _parse(command)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_a_configs_hyperparameters_are_the_models(path):
    config = _load(path)
    train = config.get("train", {})
    if "hyperparameters" in config:
        assert train["hyperparameters"] == os.path.relpath(path, ROOT), "train reads them from this file"
        preset = models.PRESETS[train["model"]]
        assert set(config["hyperparameters"]) <= set(preset.defaults), f"{path}: not {preset.name}'s hyperparameters"


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_a_configs_reproduce_commands_use_flags_their_scripts_declare(path):
    for command in _load(path).get("reproduce", []):
        used, declared = _script_flags(command)
        assert set(used) <= declared, f"{command}: {sorted(set(used) - declared)} are not flags of the script"


def test_a_config_with_an_unknown_flag_fails_the_parse(tmp_path, monkeypatch):
    bad = {**_load(os.path.join(ROOT, "configs", "orl_glasses.json"))}
    bad["preprocess"] = {**bad["preprocess"], "image_sise": "50"}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bad.json").write_text(json.dumps(bad))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        _parse("python -m pipelines.preprocess --config configs/bad.json")
