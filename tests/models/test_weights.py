"""Starting weights: TorchGeo and timm files placed in a temporary cache, files, band mapping, errors, pretraining.

The caches are the ones TorchGeo and timm download into, moved to temporary folders by
their own environment variables (TORCH_HOME for torch hub, HF_HOME for the Hugging Face
hub); the files are written in each library's own format and layout. Nothing downloads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.cli import main
from geocl.errors import GeoclError
from geocl.methods import CHECKPOINT_KEY, load_recipe
from geocl.methods.registry import build_method
from geocl.models import WeightsNotFoundError, create_encoder, resolve_weights
from tests.conftest import write_recipe

TORCHGEO_NAME = "ResNet18_Weights.SENTINEL2_ALL_MOCO"  # SSL4EO-S12 MoCo ResNet-18, 13 Sentinel-2 bands
TIMM_TAG = "test_resnet.r160_in1k"  # timm's tiny test ResNet, 3 bands (deep stem: first conv conv1.0)
HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def expected_first_conv(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """The stated mapping, band by band: channel b mod C_w, times C_w / C (C = 1: the sum)."""
    out_channels, weights_bands, height, width = weight.shape
    expected = torch.empty(out_channels, bands, height, width)
    for band in range(bands):
        if bands == 1:
            expected[:, 0] = sum(weight[:, channel] for channel in range(weights_bands))
        else:
            expected[:, band] = weight[:, band % weights_bands] * weights_bands / bands
    return expected


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Empty torch hub and Hugging Face caches: (torch hub checkpoints folder, HF hub folder)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "hf" / "hub"


@pytest.fixture(scope="module")
def torchgeo_state() -> dict[str, torch.Tensor]:
    """A 13-band timm ResNet-18 state dict, as TorchGeo's SSL4EO files hold it (no classifier)."""
    torch.manual_seed(1)
    return timm.create_model("resnet18", in_chans=13, num_classes=0).state_dict()


@pytest.fixture
def torchgeo_file(caches: tuple[Path, Path], torchgeo_state: dict[str, torch.Tensor]) -> Path:
    """The TorchGeo weights file where torchgeo's download (torch.hub.load_state_dict_from_url) keeps it."""
    from torchgeo.models import get_weight

    url = get_weight(TORCHGEO_NAME).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    assert path.parent == caches[0]
    path.parent.mkdir(parents=True)
    torch.save(torchgeo_state, path)
    return path


@pytest.fixture
def timm_state() -> dict[str, torch.Tensor]:
    """timm's test ResNet with its 1000-class classifier, as on the hub."""
    torch.manual_seed(2)
    return timm.create_model("test_resnet").state_dict()


@pytest.fixture
def timm_file(caches: tuple[Path, Path], timm_state: dict[str, torch.Tensor]) -> Path:
    """The timm tag's safetensors file in the Hugging Face hub cache layout (refs/main -> snapshot)."""
    repo = caches[1] / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HF_COMMIT)
    path = repo / "snapshots" / HF_COMMIT / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in timm_state.items()}, path)
    return path


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_torchgeo_weights_from_the_cache_load_with_the_stated_band_mapping(
    bands: int, torchgeo_file: Path, torchgeo_state: dict[str, torch.Tensor]
) -> None:
    encoder = create_encoder("resnet18", bands, weights=TORCHGEO_NAME)
    loaded = encoder.body.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], expected_first_conv(torchgeo_state["conv1.weight"], bands))
    for key in ("layer4.1.conv2.weight", "bn1.running_var", "layer1.0.bn1.bias"):
        torch.testing.assert_close(loaded[key], torchgeo_state[key])
    record = encoder.starting_weights
    assert record is not None and record["source"] == "torchgeo" and record["file"] == str(torchgeo_file)
    assert record["weights_bands"] == 13 and record["in_chans"] == bands and record["bands"][0] == "B1"
    assert len(record["sha256"]) == 64


@pytest.mark.parametrize("bands", [1, 3, 4, 13])
def test_timm_weights_from_the_hub_cache_load_with_the_stated_band_mapping(
    bands: int, timm_file: Path, timm_state: dict[str, torch.Tensor]
) -> None:
    encoder = create_encoder("test_resnet", bands, weights=TIMM_TAG)
    loaded = encoder.body.state_dict()
    torch.testing.assert_close(loaded["conv1.0.weight"], expected_first_conv(timm_state["conv1.0.weight"], bands))
    torch.testing.assert_close(loaded["conv1.3.weight"], timm_state["conv1.3.weight"])  # second stem conv as stored
    torch.testing.assert_close(loaded["layer4.0.conv2.weight"], timm_state["layer4.0.conv2.weight"])
    assert "fc.weight" not in loaded  # the classifier is left out
    assert encoder.starting_weights is not None and encoder.starting_weights["file"] == str(timm_file)
    assert encoder.starting_weights["kept_initial"] == []


def test_the_stated_mapping_is_written_down_in_the_record(timm_file: Path) -> None:
    record = create_encoder("test_resnet", 4, weights=TIMM_TAG).starting_weights
    assert record is not None and record["band_mapping"] == "bands 0..3 = weight channels 0, 1, 2, 0, times 3/4 (0.75)"


def test_pretrained_true_is_short_for_the_default_timm_tag(
    timm_file: Path, timm_state: dict[str, torch.Tensor]
) -> None:
    encoder = create_encoder("test_resnet", 3, pretrained=True)
    assert encoder.starting_weights is not None and encoder.starting_weights["weights"] == TIMM_TAG
    torch.testing.assert_close(encoder.body.state_dict()["conv1.0.weight"], timm_state["conv1.0.weight"])
    with pytest.raises(GeoclError) as error:
        create_encoder("test_resnet", 3, pretrained=True, weights=TIMM_TAG)
    assert error.value.key == "encoder.pretrained" and "not both" in str(error.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_weights_file_loads_and_a_wrapped_ddp_state_dict_too(
    suffix: str, tmp_path: Path, timm_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / f"mine{suffix}"
    if suffix == ".safetensors":
        save_file(timm_state, path)
    else:  # a training script's {"state_dict": ...} with DistributedDataParallel's prefix
        torch.save({"epoch": 3, "state_dict": {f"module.{key}": value for key, value in timm_state.items()}}, path)
    encoder = create_encoder("test_resnet", 4, weights=str(path))
    torch.testing.assert_close(
        encoder.body.state_dict()["conv1.0.weight"], expected_first_conv(timm_state["conv1.0.weight"], 4)
    )
    assert encoder.starting_weights is not None and encoder.starting_weights["source"] == "file"


def test_a_vit_file_is_resampled_to_the_encoder_patch_size(tmp_path: Path) -> None:
    torch.manual_seed(3)
    stored = timm.create_model("test_vit", in_chans=3).state_dict()  # patch 16, 160 px
    path = tmp_path / "vit.pth"
    torch.save(stored, path)
    encoder = create_encoder("test_vit", 4, args={"patch_size": 8, "img_size": 32}, weights=str(path))
    loaded = encoder.body.state_dict()
    torch.testing.assert_close(loaded["blocks.0.attn.qkv.weight"], stored["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(loaded["cls_token"], stored["cls_token"])
    assert loaded["patch_embed.proj.weight"].shape[1:] == (4, 8, 8) and loaded["pos_embed"].shape[1] == 1 + 4 * 4


def test_a_geocl_pretraining_checkpoint_gives_its_encoder(tmp_path: Path) -> None:
    method = build_method(load_recipe(write_recipe(tmp_path, tmp_path, {"name": "simclr"})), 4)
    path = tmp_path / "run.ckpt"
    checkpoint = {"state_dict": method.state_dict()}
    method.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    encoder = create_encoder("test_resnet", 4, weights=str(path))
    for key, value in method.encoder.body.state_dict().items():
        torch.testing.assert_close(encoder.body.state_dict()[key], value)
    assert encoder.starting_weights is not None and encoder.starting_weights["source"] == "geocl checkpoint"


def test_missing_torchgeo_weights_say_in_one_line_how_to_get_them(caches: tuple[Path, Path]) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights(TORCHGEO_NAME)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError) and "\n" not in message
    assert message.startswith("encoder.weights: ResNet18_Weights.SENTINEL2_ALL_MOCO is not in the torch hub cache")
    assert str(caches[0] / "resnet18_sentinel2_all_moco-59bfdff9.pth") in message
    assert f"get_weight('{TORCHGEO_NAME}').get_state_dict()" in message
    assert not caches[0].exists()  # nothing was downloaded (nor the folder made)


def test_missing_timm_weights_say_in_one_line_how_to_get_them(caches: tuple[Path, Path]) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights(TIMM_TAG)
    message = str(error.value)
    assert "\n" not in message and str(caches[1] / "models--timm--test_resnet.r160_in1k") in message
    assert f"timm.create_model('{TIMM_TAG}', pretrained=True)" in message


def test_unknown_names_list_how_names_look(caches: tuple[Path, Path]) -> None:
    with pytest.raises(GeoclError) as error:
        resolve_weights("resnet18.a1_in1kk")
    assert "did you mean resnet18.a1_in1k" in str(error.value) and "TorchGeo weights name" in str(error.value)
    with pytest.raises(GeoclError, match=re.escape("TorchGeo has no weights 'ResNet18_Weights.SENTINEL2_ALL_MOC'")):
        resolve_weights("ResNet18_Weights.SENTINEL2_ALL_MOC")
    with pytest.raises(WeightsNotFoundError, match="no such weights file"):
        resolve_weights("weights/missing.pth")


def test_weights_of_another_architecture_name_the_right_encoder(torchgeo_file: Path) -> None:
    with pytest.raises(GeoclError, match=re.escape("of resnet18, the encoder is resnet34: set encoder.name: resnet18")):
        create_encoder("resnet34", 4, weights=TORCHGEO_NAME)
    with pytest.raises(GeoclError, match="do not fit encoder test_resnet"):
        create_encoder("test_resnet", 4, weights=str(torchgeo_file))


def test_pretrain_cli_without_the_weights_prints_one_line_and_fails(
    tmp_path: Path, tiny_tiles: Path, caches: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, tiny_tiles, {"name": "simclr"})
    assert main(["pretrain", str(recipe), "encoder.pretrained=true"]) == 2
    err = capsys.readouterr().err  # the tile set's caching bars, then the error
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]
    assert errors[0].startswith("geocl pretrain: error: encoder.pretrained: timm weights test_resnet.r160_in1k are not")


@pytest.mark.parametrize("method", ["simclr", "moco", "grass"])
def test_pretraining_methods_start_from_the_weights(
    method: str, tmp_path: Path, timm_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "start.pth"
    torch.save(timm_state, path)
    recipe = load_recipe(write_recipe(tmp_path, tmp_path, {"name": method}, encoder={"weights": str(path)}))
    model = build_method(recipe, 4)
    encoders = [model.encoder, *([model.key_encoder] if method == "moco" else [])]
    for encoder in encoders:
        state = encoder.body.state_dict()
        torch.testing.assert_close(state["conv1.0.weight"], expected_first_conv(timm_state["conv1.0.weight"], 4))
        torch.testing.assert_close(state["layer3.0.conv1.weight"], timm_state["layer3.0.conv1.weight"])


def test_geocl_pretrain_starts_from_the_weights_and_records_them(
    tmp_path: Path, tiny_tiles: Path, timm_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "start.safetensors"
    save_file(timm_state, path)
    recipe = write_recipe(
        tmp_path,
        tiny_tiles,
        {"name": "moco"},
        encoder={"weights": str(path)},
        # one step at a learning rate that moves no weight by more than 1e-9: the step-0 state
        optimizer={"name": "sgd", "lr": 1e-9, "weight_decay": 0.0},
        trainer={"max_epochs": 1, "limit_train_batches": 1},
        monitor={"every_n_steps": 0},
    )
    assert main(["pretrain", str(recipe)]) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    for prefix in ("encoder.body.", "key_encoder.body."):
        state = checkpoint["state_dict"]
        torch.testing.assert_close(
            state[f"{prefix}conv1.0.weight"], expected_first_conv(timm_state["conv1.0.weight"], 4), atol=1e-7, rtol=0
        )
        torch.testing.assert_close(
            state[f"{prefix}layer4.0.conv2.weight"], timm_state["layer4.0.conv2.weight"], atol=1e-7, rtol=0
        )
    record = checkpoint[CHECKPOINT_KEY]["starting_weights"]
    assert record["file"] == str(path) and record["weights_bands"] == 3 and record["in_chans"] == 4
    assert checkpoint[CHECKPOINT_KEY]["recipe"]["encoder"]["weights"] == str(path)
