"""One declaration per setting (finer_cam.settings): each script's parser is made from its run configuration,
the settings several scripts take are the same flag in each, and a declared check stops a bad value whether
the configuration is made from Python or from a command line."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from dataclasses import dataclass

import pytest

import evaluate
import field_guide
import generate_cam
import train_classifier
import visualize
from finer_cam import checks, settings
from finer_cam.cli import EXIT_USAGE, main_guard, message
from finer_cam.errors import ArgumentError
from finer_cam.evaluate import EvaluateConfig
from finer_cam.generate import GenerateConfig
from finer_cam.guide import GuideConfig
from finer_cam.settings import build_parser, check_settings, declared, default_of, setting
from finer_cam.train import TrainConfig
from finer_cam.visualize import VisualizeConfig

SCRIPTS = [(generate_cam, GenerateConfig), (train_classifier, TrainConfig), (evaluate, EvaluateConfig),
           (visualize, VisualizeConfig), (field_guide, GuideConfig)]
IDS = [module.__name__ for module, _ in SCRIPTS]


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "verbose")}


def required_values(config) -> dict[str, str]:
    """A value for each field without a default (all of them paths or names)."""
    return {f.name: f"{f.name}-value" for f, _ in declared(config) if default_of(f) is dataclasses.MISSING}


@pytest.mark.parametrize("module, config", SCRIPTS, ids=IDS)
def test_parser_and_configuration_agree_on_every_field(module, config):
    parser = module.build_parser()
    flags = actions(parser)
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert sorted(flags) == sorted(fields)  # no flag without a field, no field without a flag
    for name, f in fields.items():
        action, s = flags[name], f.metadata[settings.SETTING]
        assert action.option_strings[0] == f"--{name}"  # the flag an error about the field names
        assert s.help and action.help == s.help
        default = default_of(f)
        assert action.required is (default is dataclasses.MISSING), name
        if default is not dataclasses.MISSING:
            assert action.default == default, name
    assert [a.dest for a in parser._actions][-1] == "verbose"
    # the defaults a command line gives are the configuration's own
    given = required_values(config)
    argv = [arg for name, value in given.items() for arg in (f"--{name}", value)]
    parsed = vars(parser.parse_args(argv))
    assert parsed.pop("verbose") is False
    assert config(**parsed) == config(**given)


def test_every_field_of_a_configuration_must_be_a_setting():
    @dataclass
    class Loose:
        path: str = setting(help="a path")
        count: int = 3

    with pytest.raises(TypeError, match="count"):
        build_parser(Loose, "loose")

    @dataclass
    class Misnamed:
        path: str = setting(flags=("--where",), help="a path")

    with pytest.raises(TypeError, match="--path"):
        build_parser(Misnamed, "misnamed")


# settings several scripts take: which configurations have each (a script that drops one, or declares its own
# instead of the shared one, fails here)
SHARED = {
    "backbone": (settings.BACKBONE, {GenerateConfig, TrainConfig}),
    "model_path": (settings.MODEL_PATH, {GenerateConfig, TrainConfig}),
    "offline": (settings.OFFLINE, {GenerateConfig, TrainConfig}),
    "arch": (settings.ARCH, {GenerateConfig, TrainConfig}),
    "clip_pool": (settings.CLIP_POOL, {GenerateConfig, TrainConfig}),
    "normalize": (settings.NORMALIZE, {GenerateConfig, TrainConfig}),
    "num_workers": (settings.NUM_WORKERS, {GenerateConfig, TrainConfig, EvaluateConfig, GuideConfig}),
    "max_pixels": (settings.MAX_PIXELS, {GenerateConfig, TrainConfig, EvaluateConfig, VisualizeConfig, GuideConfig}),
    "device": (settings.DEVICE, {GenerateConfig, TrainConfig, EvaluateConfig, GuideConfig}),
    "cam_dir": (settings.CAM_DIR, {EvaluateConfig, VisualizeConfig, GuideConfig}),
    "dataset_dir": (settings.RUN_DATASET_DIR, {EvaluateConfig, VisualizeConfig, GuideConfig}),
    "part_radius": (settings.PART_RADIUS, {EvaluateConfig, GuideConfig}),
}
RUN_OVERRIDES = {"model_path": settings.RUN_MODEL_PATH, "classifier_path": settings.RUN_CLASSIFIER_PATH,
                 "arch": settings.RUN_ARCH}  # evaluate.py's and field_guide.py's, in place of run.json's


def shared_setting(config, name: str):
    if config in (EvaluateConfig, GuideConfig) and name in RUN_OVERRIDES:
        return RUN_OVERRIDES[name]
    if name in SHARED and config in SHARED[name][1]:
        return SHARED[name][0]
    return None


@pytest.mark.parametrize("module, config", SCRIPTS, ids=IDS)
def test_a_setting_declared_once_is_the_same_flag_in_every_script_that_takes_it(module, config):
    names = {f.name for f in dataclasses.fields(config)}
    for name, (_, users) in SHARED.items():
        assert (name in names) == (config in users) or name in RUN_OVERRIDES, name
    flags = actions(module.build_parser())
    for f, s in declared(config):
        shared = shared_setting(config, f.name)
        if shared is None:
            continue
        # the declaration is the shared one; a script gives only its own help, group or position
        assert s == dataclasses.replace(shared, help=s.help, group=s.group, kw_only=s.kw_only), f.name
        action = flags[f.name]
        assert action.option_strings == list(shared.flags or (f"--{f.name}",))
        assert action.default == (None if shared.default is settings.REQUIRED else shared.default)
        assert action.type is (shared.type or {int: int, float: float}.get(type(shared.default)))
        assert action.metavar == (shared.metavar or (settings.one_of(shared.choices) if shared.choices else None))


# flags whose help is the shared declaration's in each of these scripts
SAME_HELP = {
    "--num_workers": (generate_cam, train_classifier, evaluate, field_guide),
    "--max_pixels": (generate_cam, train_classifier, evaluate, visualize, field_guide),
    "--device": (generate_cam, train_classifier, evaluate),
    "--model_path": (generate_cam, train_classifier),
    "--offline": (generate_cam, train_classifier),
    "--arch": (generate_cam, train_classifier),
    "--clip_pool": (generate_cam, train_classifier),
    "--dataset_dir": (evaluate, field_guide),
    "--classifier_path": (evaluate, field_guide),
}


@pytest.mark.parametrize("flag, modules", SAME_HELP.items(), ids=list(SAME_HELP))
def test_a_shared_flag_reads_the_same_in_every_help(flag, modules):
    texts = set()
    for module in modules:
        parser = module.build_parser()
        (action,) = [a for a in parser._actions if flag in a.option_strings]
        texts.add(parser._get_formatter()._expand_help(action))
    assert len(texts) == 1, texts
    # and the guide says what it takes a device for
    (device,) = [a for a in field_guide.build_parser()._actions if "--device" in a.option_strings]
    assert device.help == settings.DEVICE.help + " (for discovering parts)"


@pytest.mark.parametrize("config, positional", [
    (GenerateConfig, ["dataset_path", "save_dir"]), (TrainConfig, ["data_root", "model_path", "output_dir"]),
    (EvaluateConfig, ["cam_dir", "out"]), (VisualizeConfig, ["cam_dir", "save_dir"]),
    (GuideConfig, ["cam_dir", "save_dir"]),
])
def test_python_passes_the_required_fields_by_position_and_the_others_by_keyword(config, positional):
    parameters = inspect.signature(config).parameters.values()
    assert [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
    assert TrainConfig("d", None, "o").output_dir == "o"
    assert TrainConfig("d").output_dir == "pretrained_models/classifier/"  # the command line's default
    with pytest.raises(TypeError):
        GenerateConfig("d", "s", "input")


# -------------------------------------------------------------------------------------------- the checks

@dataclass
class Toy:
    path: str = setting(group="input", help="a path")
    count: int = setting(3, check=checks.AtLeast(2, "at least 2 things"), help="how many")
    colour: str | None = setting(None, choices=("red", "blue"), help="which colour (default: none)")
    sizes: list[float] = setting([1.0], group="sizes", help="the sizes")

    def __post_init__(self) -> None:
        check_settings(self)


def toy_main(argv: list[str]) -> int:
    flags = vars(build_parser(Toy, "toy.py").parse_args(argv))
    flags.pop("verbose")
    return main_guard("toy.py", lambda stop: 0 if Toy(**flags) else 1)


def test_a_declared_check_runs_from_python_and_from_the_command_line(capsys):
    with pytest.raises(ArgumentError, match=r"^count=1: expected at least 2 things$"):
        Toy("p", count=1)
    with pytest.raises(ArgumentError, match=r"^colour='green': expected one of red, blue$"):
        Toy("p", colour="green")
    assert Toy("p", colour=None).sizes == [1.0] and Toy("p").sizes is not Toy("p").sizes
    assert toy_main(["--path", "p", "--count", "1"]) == EXIT_USAGE
    assert capsys.readouterr().err == "toy.py: error: --count 1: expected at least 2 things\n"
    assert toy_main(["--path", "p", "--colour", "green"]) == EXIT_USAGE
    assert capsys.readouterr().err == "toy.py: error: --colour 'green': expected one of red, blue\n"
    assert toy_main(["--path", "p", "--count", "2", "--sizes", "2", "3.5"]) == 0
    help_text = build_parser(Toy, "toy.py").format_help()
    assert "input:\n  --path PATH" in help_text and "{red,blue}" in help_text
    assert help_text.index("sizes:") > help_text.index("--colour") > help_text.index("--count")
    assert help_text.rstrip().endswith("more log output (default: False)")


@pytest.mark.parametrize("module, config, flag, text, value", [
    (generate_cam, GenerateConfig, "batch_size", "0", 0),
    (generate_cam, GenerateConfig, "decode", "nvjpeg", "nvjpeg"),
    (generate_cam, GenerateConfig, "modes", "finer:0.6", ["finer:0.6"]),
    (train_classifier, TrainConfig, "seed", "-1", -1),
    (train_classifier, TrainConfig, "max_pixels", "-1", -1),
    (evaluate, EvaluateConfig, "percent", "100", [100.0]),
    (evaluate, EvaluateConfig, "num_workers", "-1", -1),
    (visualize, VisualizeConfig, "alpha", "2", 2.0),
    (visualize, VisualizeConfig, "grid", "figure.gif", "figure.gif"),
    (field_guide, GuideConfig, "part_radius", "0", 0.0),
    (field_guide, GuideConfig, "rank_by", "most", "most"),
])
def test_a_scripts_declared_check_stops_the_same_value_from_python_and_its_command_line(
        module, config, flag, text, value, capsys):
    given = required_values(config)
    with pytest.raises(ArgumentError) as info:
        config(**given, **{flag: value})
    error = info.value
    assert error.name == flag and str(error).startswith(f"{flag}=")
    argv = [arg for name, v in given.items() for arg in (f"--{name}", v)] + [f"--{flag}", text]
    assert module.main(argv) == EXIT_USAGE
    expected = message(error)  # the command line's wording of the same error
    assert capsys.readouterr().err.splitlines()[-1] == f"{module.PROG}: error: {expected}"


@pytest.mark.parametrize("make, name, says", [
    (lambda: GenerateConfig(dataset_path="d", save_dir=""), "save_dir", "expected a non-empty text"),
    (lambda: GenerateConfig(dataset_path=1, save_dir="s"), "dataset_path", "expected a non-empty text"),
    (lambda: GenerateConfig(dataset_path="d", save_dir=None), "save_dir", "expected a non-empty text"),
    (lambda: GenerateConfig(dataset_path="d", save_dir="s", overwrite="no"), "overwrite", "expected True or False"),
    (lambda: GenerateConfig(dataset_path="d", save_dir="s", device=5), "device", "expected a non-empty text"),
    (lambda: GenerateConfig(dataset_path="d", save_dir="s", modes=[1]), "modes", "each a non-empty text"),
    (lambda: EvaluateConfig(cam_dir="c", out="o", percent=50), "percent", "expected a non-empty list"),
    (lambda: EvaluateConfig(cam_dir="c", out=""), "out", "expected a non-empty text"),
    (lambda: TrainConfig("d", seed=2**64), "seed", "below 2**63"),
])
def test_a_value_of_another_type_or_an_empty_path_is_refused_by_the_configuration(make, name, says):
    """Checked against the field's type before any value check reads it: an empty path would name the working
    folder, a text for a switch would count as true."""
    with pytest.raises(ArgumentError) as info:
        make()
    assert info.value.name == name and says in str(info.value)


def test_an_empty_output_folder_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    assert generate_cam.main(["--dataset_path", "images", "--save_dir", ""]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["generate_cam.py: error: --save_dir '': expected a non-empty text"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
