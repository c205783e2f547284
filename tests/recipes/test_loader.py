"""Recipes: loading, overrides, "did you mean" errors, round trip and atomic saving."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf
from pydantic import ValidationError

from geocl.errors import GeoclError
from geocl.methods import load_recipe, read_saved_recipe
from geocl.recipes import (
    AugmentConfig,
    OptimizerConfig,
    Recipe,
    method_names,
    method_params,
    recipe_to_dict,
    recipe_to_yaml,
    register_method_config,
    save_recipe,
)
from geocl.recipes import schema as schema_module


@dataclass
class DummySimCLR:
    """Stand-in for a real method's parameters."""

    temperature: float = 0.1


@dataclass
class DummyGrass:
    """Stand-in with several parameter types."""

    temperature: float = 0.5
    warmup_epochs: int = 1
    threshold_ratio: float = 0.5


#: The example recipe of the design (CPU-sized GraSS).
EXAMPLE_YAML = """\
name: grass
out: runs/grass            # run folder
seed: 0
data:
  tiles: demo_out/tiles
  split: train
  batch_size: 32
  num_workers: 2
  view_size: 96
encoder:
  name: resnet18
  pretrained: false
method:
  name: grass
  temperature: 0.5
  warmup_epochs: 1
  threshold_ratio: 0.5
augment:
  scale: [0.2, 1.0]
optimizer:
  name: adamw
  lr: 0.001
  weight_decay: 1.0e-6
  momentum: 0.9
scheduler:
  name: cosine
  warmup_epochs: 0
trainer:
  max_epochs: 3
  max_steps: -1
  devices: 1
  accelerator: auto
  strategy: auto
  precision: 32-true
  log_every_n_steps: 5
  limit_train_batches: 1.0
"""


@pytest.fixture(autouse=True)
def methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the two dummy methods are registered; the real registry comes back afterwards.

    The built-in methods registered when this file imported :mod:`geocl.methods` (for its
    ``load_recipe``); the recipe layer validates against whatever is registered, here the dummies.
    """
    monkeypatch.setattr(schema_module, "_METHOD_CONFIGS", {})
    register_method_config("simclr", DummySimCLR)
    register_method_config("grass", DummyGrass)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    path = tmp_path / "grass.yaml"
    path.write_text(EXAMPLE_YAML)
    return path


def write_recipe(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def example_data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE_YAML))


MINIMAL = {"name": "r", "out": "runs/r", "data": {"tiles": "tiles"}, "method": {"name": "simclr"}}


# ------------------------------------------------------------------ good recipes


def test_example_loads_with_types_and_read_only(example: Path) -> None:
    recipe = load_recipe(example)
    assert isinstance(recipe, Recipe)
    assert isinstance(recipe.optimizer.weight_decay, float)  # `1.0e-6` is a float, not a string
    assert recipe.optimizer.weight_decay == pytest.approx(1e-6)
    assert recipe.trainer.limit_train_batches == 1.0 and isinstance(recipe.trainer.limit_train_batches, float)
    assert recipe.trainer.devices == 1 and isinstance(recipe.trainer.devices, int)
    assert recipe.augment.scale == (0.2, 1.0) and recipe.augment.hflip_p == 0.5  # the rest: defaults
    # The method section is the model made from the registered dataclass, plus its name.
    assert type(recipe.method).registered_from is DummyGrass
    assert recipe.method.name == "grass" and recipe.method.warmup_epochs == 1
    with pytest.raises(ValidationError):
        recipe.data.batch_size = 4  # read-only
    with pytest.raises(AttributeError):
        recipe.data.not_a_key  # noqa: B018


def test_minimal_recipe_takes_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, MINIMAL))
    assert recipe.seed == 0
    assert recipe.data.split == "train" and recipe.data.batch_size == 32 and recipe.data.view_size == 96
    assert recipe.encoder.name == "resnet18" and recipe.encoder.pretrained is False
    assert recipe.optimizer == OptimizerConfig()
    assert recipe.scheduler.name == "cosine" and recipe.trainer.precision == "32-true"
    assert recipe.method.temperature == pytest.approx(0.1)
    assert recipe.augment == AugmentConfig()


def test_empty_section_keeps_defaults(tmp_path: Path) -> None:
    data = {**MINIMAL, "encoder": None, "augment": None}
    recipe = load_recipe(write_recipe(tmp_path, data))
    assert recipe.encoder.name == "resnet18" and recipe.augment == AugmentConfig()


def test_interpolations_are_resolved(tmp_path: Path) -> None:
    data = {**MINIMAL, "out": "runs/${name}-${seed}"}
    assert load_recipe(write_recipe(tmp_path, data)).out == "runs/r-0"


# ------------------------------------------------------------------- overrides


def test_overrides_of_every_kind_apply(example: Path) -> None:
    recipe = load_recipe(
        example,
        [
            "trainer.max_epochs=1",  # int
            "optimizer.lr=1e-2",  # float written without a dot (a string to plain YAML 1.1)
            "out=runs/x",  # str with a slash
            "augment.scale=[0.5,1.0]",  # list
            "encoder.args.extra.depth=3",  # new nested key in the free-form section
            "method.temperature=0.2",  # method parameter
            "method.warmup_epochs=2",
            "trainer.devices=auto",
            "trainer.limit_train_batches=10",  # an int stays an int (a batch count)
            "encoder.pretrained=true",
            "data={batch_size: 8}",  # a mapping merges into the section
        ],
    )
    assert recipe.trainer.max_epochs == 1
    assert recipe.optimizer.lr == pytest.approx(0.01)
    assert recipe.out == "runs/x"
    assert recipe.augment.scale == (0.5, 1.0)
    assert recipe.encoder.args["extra"]["depth"] == 3
    assert recipe.method.temperature == pytest.approx(0.2) and recipe.method.warmup_epochs == 2
    assert recipe.trainer.devices == "auto"
    assert recipe.trainer.limit_train_batches == 10 and isinstance(recipe.trainer.limit_train_batches, int)
    assert recipe.encoder.pretrained is True
    assert recipe.data.batch_size == 8 and recipe.data.tiles == "demo_out/tiles"


def test_later_override_wins_and_method_can_be_switched(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["seed=1", "seed=7", "method.name=grass", "method.threshold_ratio=0.25"])
    assert recipe.seed == 7
    assert type(recipe.method).registered_from is DummyGrass and recipe.method.threshold_ratio == 0.25


def test_method_params_gives_the_validated_parameters(example: Path) -> None:
    name, params = method_params(load_recipe(example, ["method.threshold_ratio=0.3"]))
    assert name == "grass"
    assert params.model_dump() == {"name": "grass", "temperature": 0.5, "warmup_epochs": 1, "threshold_ratio": 0.3}
    # Also from the plain form a checkpoint stores.
    name, params = method_params({"method": {"name": "simclr", "temperature": 0.2}})
    assert name == "simclr" and params.temperature == 0.2
    with pytest.raises(GeoclError, match="temperature") as caught:
        method_params({"method": {"name": "simclr", "temperature": "hot"}})
    assert caught.value.key == "method.temperature"


# ------------------------------------------------------------ misspelt keys


MISSPELT = [
    # (section, misspelt key, dotted key in the error, suggestion)
    (None, "optimiser", "optimiser", "optimizer"),
    ("data", "batchsize", "data.batchsize", "data.batch_size"),
    ("encoder", "pretrain", "encoder.pretrain", "encoder.pretrained"),
    ("optimizer", "weightdecay", "optimizer.weightdecay", "optimizer.weight_decay"),
    ("scheduler", "warmup_epoch", "scheduler.warmup_epoch", "scheduler.warmup_epochs"),
    ("trainer", "max_epoch", "trainer.max_epoch", "trainer.max_epochs"),
    ("method", "treshold_ratio", "method.treshold_ratio", "method.threshold_ratio"),
]


@pytest.mark.parametrize(("section", "bad", "dotted", "suggestion"), MISSPELT)
def test_misspelt_key_in_file(tmp_path: Path, section: str | None, bad: str, dotted: str, suggestion: str) -> None:
    data = example_data()
    (data if section is None else data[section])[bad] = {"lr": 1} if section is None else 1
    path = write_recipe(tmp_path, data)
    with pytest.raises(GeoclError) as caught:
        load_recipe(path)
    assert caught.value.key == dotted
    assert caught.value.path == str(path)
    message = str(caught.value)
    assert f"unknown key '{dotted}'" in message and f"did you mean '{suggestion}'?" in message


@pytest.mark.parametrize(("section", "bad", "dotted", "suggestion"), MISSPELT)
def test_misspelt_key_in_override(example: Path, section: str | None, bad: str, dotted: str, suggestion: str) -> None:
    override = f"{bad}.lr=1" if section is None else f"{dotted}=1"
    with pytest.raises(GeoclError) as caught:
        load_recipe(example, [override])
    assert caught.value.key == dotted
    message = str(caught.value)
    assert f"did you mean '{suggestion}'?" in message and f"override '{override}'" in message


def test_unknown_key_with_nothing_close_lists_the_valid_keys(example: Path) -> None:
    with pytest.raises(GeoclError, match=r"unknown key 'data\.zzz'.*; valid keys: tiles, split, batch_size"):
        load_recipe(example, ["data.zzz=1"])


def test_unknown_method_suggests_the_closest(example: Path) -> None:
    with pytest.raises(GeoclError) as caught:
        load_recipe(example, ["method.name=grss"])
    assert caught.value.key == "method.name"
    assert "invalid value 'grss' for method.name" in str(caught.value)
    assert "did you mean 'grass'? (choices: grass, simclr)" in str(caught.value)


def test_switching_method_refuses_the_old_methods_keys(example: Path) -> None:
    expected = r"unknown key 'method\.warmup_epochs' for method 'simclr'"
    with pytest.raises(GeoclError, match=expected) as caught:
        load_recipe(example, ["method.name=simclr"])
    assert caught.value.key == "method.warmup_epochs"


# --------------------------------------------------------- bad values, missing


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("data.batch_size=abc", "data.batch_size", "invalid value 'abc' for data.batch_size.*an integer"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs", "expected an integer"),
        ("method.temperature=hot", "method.temperature", "expected a number"),
        ("encoder.pretrained=maybe", "encoder.pretrained", "expected true or false"),
        ("data=5", "data", "expected a mapping"),
        ("trainer.devices=two", "trainer.devices", "'auto'"),
        ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches", r"fraction in \(0, 1\]"),
        ("data.batch_size=0", "data.batch_size", "must be at least 1"),
        ("optimizer.lr=0", "optimizer.lr", "greater than 0"),
        ("name=${nope}", "name", "cannot resolve the value of name"),
    ],
)
def test_wrong_type_or_range(example: Path, override: str, key: str, expected: str) -> None:
    with pytest.raises(GeoclError, match=expected) as caught:
        load_recipe(example, [override])
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("optimizer.name=adam", "optimizer.name", "adamw"),
        ("scheduler.name=cosin", "scheduler.name", "cosine"),
        ("data.split=trian", "data.split", "train"),
        ("trainer.precision=16-mix", "trainer.precision", "16-mixed"),
    ],
)
def test_bad_choice_suggests_the_closest(example: Path, override: str, key: str, suggestion: str) -> None:
    with pytest.raises(GeoclError, match=rf"did you mean '{suggestion}'\? \(choices: ") as caught:
        load_recipe(example, [override])
    assert caught.value.key == key


def test_missing_mandatory_value(tmp_path: Path) -> None:
    data = example_data()
    del data["data"]["tiles"]
    with pytest.raises(GeoclError, match=r"missing value for data\.tiles$") as caught:
        load_recipe(write_recipe(tmp_path, data))
    assert caught.value.key == "data.tiles"


def test_missing_method(tmp_path: Path) -> None:
    data = {key: value for key, value in MINIMAL.items() if key != "method"}
    with pytest.raises(GeoclError, match=r"missing value for method\.name") as caught:
        load_recipe(write_recipe(tmp_path, data))
    assert caught.value.key == "method.name"


@pytest.mark.parametrize("override", ["trainer.max_epochs", "=3", "+seed=1"])
def test_malformed_override(example: Path, override: str) -> None:
    with pytest.raises(GeoclError, match="malformed override") as caught:
        load_recipe(example, [override])
    assert caught.value.key == override


def test_override_into_a_value_that_is_not_a_section(example: Path) -> None:
    with pytest.raises(GeoclError, match="seed holds 0, not a section") as caught:
        load_recipe(example, ["seed.x=1"])
    assert caught.value.key == "seed"


# ------------------------------------------------------------------ bad files


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: a\nout: b\ndata:\n  tiles: [unclosed\n  split: train\n")
    with pytest.raises(GeoclError, match=r"broken\.yaml: invalid YAML at line \d+") as caught:
        load_recipe(path)
    assert caught.value.path == str(path)


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nseed: 1\nseed: 2\n")
    with pytest.raises(GeoclError, match=r"line 3.*duplicate key 'seed'"):
        load_recipe(path)


def test_missing_file_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match="not found") as caught:
        load_recipe(tmp_path / "nope.yaml")
    assert caught.value.path == str(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(GeoclError, match="must be a mapping"):
        load_recipe(listing)


# ------------------------------------------------------- round trip and saving


def test_yaml_round_trip_gives_an_equal_config(example: Path, tmp_path: Path) -> None:
    overrides = ["name='1e5'", "trainer.precision=16", "encoder.args.when=2024-01-01", "out=runs/${name}"]
    recipe = load_recipe(example, overrides)
    text = recipe_to_yaml(recipe)
    assert "${" not in text  # resolved
    assert text.index("name: grass") < text.index("temperature:")  # the selector leads its section
    again = tmp_path / "again.yaml"
    again.write_text(text)
    reloaded = load_recipe(again)
    assert reloaded == recipe
    assert reloaded.name == "1e5" and reloaded.trainer.precision == "16"  # strings stayed strings
    # Plain OmegaConf.load (as a resumed run reads config.yaml) agrees.
    assert OmegaConf.to_container(OmegaConf.load(again)) == recipe_to_dict(recipe)


def test_a_saved_recipe_missing_a_key_added_since_reads_as_the_same_recipe(example: Path, tmp_path: Path) -> None:
    recipe = load_recipe(example)
    saved = tmp_path / "config.yaml"
    save_recipe(recipe, saved)
    assert read_saved_recipe(saved) == recipe_to_dict(recipe)
    # a run saved before trainer.gradient_clip_val existed: the default fills it in
    data = yaml.safe_load(saved.read_text())
    del data["trainer"]["gradient_clip_val"]
    saved.write_text(yaml.safe_dump(data))
    assert read_saved_recipe(saved) == recipe_to_dict(recipe)
    # a real difference is still one, and a file that is no recipe reads as None
    data["trainer"]["max_epochs"] += 1
    saved.write_text(yaml.safe_dump(data))
    assert read_saved_recipe(saved) != recipe_to_dict(recipe)
    saved.write_text("method: {name: nosuchmethod}\n")
    assert read_saved_recipe(saved) is None


def test_gradient_clip_val_must_not_be_negative(example: Path) -> None:
    assert load_recipe(example, ["trainer.gradient_clip_val=1.0"]).trainer.gradient_clip_val == 1.0
    with pytest.raises(GeoclError, match="trainer.gradient_clip_val"):
        load_recipe(example, ["trainer.gradient_clip_val=-1"])


def test_monitor_section_defaults_off_values_empty_section_and_a_saved_run_without_it(
    example: Path, tmp_path: Path
) -> None:
    monitor = load_recipe(example).monitor
    assert (monitor.every_n_steps, monitor.tiles, monitor.grid, monitor.k) == (10, 8, 16, 20)
    assert load_recipe(example, ["monitor.every_n_steps=null"]).monitor.every_n_steps is None  # off
    assert load_recipe(example, ["monitor.every_n_steps=0"]).monitor.every_n_steps == 0  # off
    assert load_recipe(write_recipe(tmp_path, {**MINIMAL, "monitor": None})).monitor == monitor
    for override, key in [
        ("monitor.every_n_steps=-1", "monitor.every_n_steps"),
        ("monitor.tiles=1", "monitor.tiles"),
        ("monitor.temperature=0", "monitor.temperature"),
    ]:
        with pytest.raises(GeoclError) as caught:
            load_recipe(example, [override])
        assert caught.value.key == key
    # a run saved before the monitor existed reads as the same recipe
    saved = tmp_path / "config.yaml"
    save_recipe(load_recipe(example), saved)
    data = yaml.safe_load(saved.read_text())
    del data["monitor"]
    saved.write_text(yaml.safe_dump(data))
    assert read_saved_recipe(saved) == recipe_to_dict(load_recipe(example))


def test_save_recipe_writes_atomically(example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(example, ["seed=3"])
    target = tmp_path / "run" / "config.yaml"
    save_recipe(recipe, target)
    assert load_recipe(target) == recipe
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.yaml"]

    # A write that fails half-way leaves the previous file whole and no temporary behind.
    before = target.read_text()

    def failing_write(self: Path, text: str, **kwargs: Any) -> int:
        Path.write_bytes(self, text[:10].encode())
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_recipe(load_recipe(example, ["seed=4"]), target)
    monkeypatch.undo()
    assert target.read_text() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.yaml"]


# --------------------------------------------------------------------- registry


def test_registry() -> None:
    assert method_names() == ["grass", "simclr"]
    register_method_config("grass", DummyGrass)  # the same class again is fine (module reload)
    with pytest.raises(ValueError, match="already registered"):
        register_method_config("grass", DummySimCLR)
    with pytest.raises(TypeError):
        register_method_config("x", dict)

    @dataclass
    class Named:
        name: str = "x"

    with pytest.raises(ValueError, match="'name' field"):
        register_method_config("named", Named)


def test_loader_never_leaks_omegaconf_errors(example: Path) -> None:
    """A sweep of bad overrides: each one must come back as a GeoclError."""
    bad = [
        "seed=abc",
        "seed=[1]",
        "data.tiles=[a, b]",
        "method.warmup_epochs={a: 1}",
        "trainer.max_steps=null",
        "augment=[1]",
        "method=3",
        "method.name=[grass]",
        "trainer.accelerator=gup",
        "seed=-1",
    ]
    for override in bad:
        with pytest.raises(GeoclError):
            load_recipe(example, [override])


def test_the_recipe_layer_reads_and_validates_without_methods_or_torch(tmp_path: Path) -> None:
    """geocl.recipes stands below the methods: it validates against the sections registered
    with it, imports no method to find them, and no torch (a recipe is checked before any heavy import)."""
    import subprocess
    import sys

    path = write_recipe(tmp_path, {**MINIMAL, "method": {"name": "toy", "temperature": 0.3}})
    code = f"""
import sys
from dataclasses import dataclass
from geocl.recipes import read_recipe, register_method_config, validate_recipe

@dataclass
class Toy:
    temperature: float = 0.1

register_method_config("toy", Toy)
data, by_key = read_recipe({str(path)!r}, ["seed=5"])
recipe = validate_recipe(data, path={str(path)!r}, overrides=by_key)
print(recipe.method.name, recipe.method.temperature, recipe.seed, by_key)
print(sorted(m for m in sys.modules if m.startswith("geocl.methods") or m == "torch"))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["toy 0.3 5 {'seed': 'seed=5'}", "[]"]
