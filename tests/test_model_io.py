"""Saving, loading and importing models: atomic writes and clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from rissole_trt.config import ModelConfig
from rissole_trt.models import RissoleModel, RissoleModelError
from rissole_trt.models.rissole import CONFIG_FILE, WEIGHTS_FILE

from reference_fixtures import paths


@pytest.fixture(scope="module")
def small_model() -> RissoleModel:
    torch.manual_seed(0)
    return RissoleModel(ModelConfig())


@pytest.fixture
def saved(small_model, tmp_path):
    return small_model.save(tmp_path / "model")


def _same_weights(a: RissoleModel, b: RissoleModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- save / load


def test_save_writes_two_files_and_no_temporaries(saved):
    assert sorted(f.name for f in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert [f.name for f in saved.parent.iterdir()] == ["model"]
    doc = json.loads((saved / CONFIG_FILE).read_text())
    assert doc["format"] == "rissole_trt.model" and doc["version"] == 1
    assert ModelConfig.from_dict(doc["config"]) == ModelConfig()


def test_load_gives_identical_weights_in_eval_mode(small_model, saved):
    loaded = RissoleModel.load(saved)
    assert _same_weights(small_model, loaded)
    assert not loaded.training and not loaded.unet.training


def test_fp16_storage_halves_the_file_and_loads_as_float32_rounded_weights(small_model, saved, tmp_path):
    from rissole_trt.errors import InvalidArgumentError

    half = small_model.save(tmp_path / "half", weights_dtype="fp16")
    size = lambda d: (d / WEIGHTS_FILE).stat().st_size  # noqa: E731
    assert size(half) < 0.51 * size(saved)
    loaded = RissoleModel.load(half)
    for name, value in loaded.state_dict().items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, small_model.state_dict()[name].half().float()), name
    with pytest.raises(InvalidArgumentError, match="weights_dtype"):
        small_model.save(tmp_path / "bf", weights_dtype="int8")


def test_save_refuses_to_replace_without_overwrite(small_model, saved):
    with pytest.raises(FileExistsError, match="overwrite"):
        small_model.save(saved)


def test_save_overwrite_replaces_a_saved_model(saved):
    torch.manual_seed(1)
    other = RissoleModel(ModelConfig())
    other.save(saved, overwrite=True)
    assert _same_weights(other, RissoleModel.load(saved))
    assert [f.name for f in saved.parent.iterdir()] == ["model"]


def test_save_never_replaces_a_foreign_directory(small_model, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.png").write_bytes(b"not a model")
    with pytest.raises(FileExistsError, match="not a saved model"):
        small_model.save(foreign, overwrite=True)
    assert (foreign / "cat.png").read_bytes() == b"not a model"


def test_failed_save_leaves_nothing_behind(small_model, tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        small_model.save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_load_missing_directory_or_file(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        RissoleModel.load(tmp_path / "nowhere")
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        RissoleModel.load(saved)


def test_load_corrupt_safetensors(saved):
    (saved / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(RissoleModelError, match="does not match the sha256"):
        RissoleModel.load(saved)
    with pytest.raises(RissoleModelError, match=rf"{WEIGHTS_FILE}: corrupt or truncated"):
        RissoleModel.load(saved, verify=False)


def test_load_truncated_safetensors(saved):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(RissoleModelError, match="corrupt or truncated"):
        RissoleModel.load(saved, verify=False)


def test_a_flipped_byte_in_the_weights_is_refused(saved):
    data = bytearray((saved / WEIGHTS_FILE).read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: still a valid safetensors file
    (saved / WEIGHTS_FILE).write_bytes(bytes(data))
    RissoleModel.load(saved, verify=False)  # loads: the file itself is well formed
    with pytest.raises(RissoleModelError, match="does not match the sha256"):
        RissoleModel.load(saved)


def test_load_missing_key(saved):
    from safetensors.torch import load_file, save_file

    state = load_file(str(saved / WEIGHTS_FILE))
    del state["unet.out_conv.weight"]
    save_file(state, str(saved / WEIGHTS_FILE))
    with pytest.raises(RissoleModelError, match=r"missing keys unet\.out_conv\.weight"):
        RissoleModel.load(saved, verify=False)  # the weights were re-saved


def test_load_unexpected_key(saved):
    from safetensors.torch import load_file, save_file

    state = load_file(str(saved / WEIGHTS_FILE))
    state["unet.extra.weight"] = torch.zeros(3)
    save_file(state, str(saved / WEIGHTS_FILE))
    with pytest.raises(RissoleModelError, match=r"unexpected keys unet\.extra\.weight"):
        RissoleModel.load(saved, verify=False)  # the weights were re-saved


def test_load_weights_of_another_config_is_a_shape_mismatch(saved):
    """config.json for k = 5 beside weights for k = 3: the neighbour conv does not fit."""
    doc = json.loads((saved / CONFIG_FILE).read_text())
    doc["config"]["unet"]["k"] = 5
    (saved / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(RissoleModelError, match=r"shape mismatch: unet\.cond_conv\.weight: \[8, 30, 3, 3\] instead of \[8, 50, 3, 3\]"):
        RissoleModel.load(saved)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"config": {}}), "not a rissole_trt model config"),
        (json.dumps({"format": "rissole_trt.model", "version": 99, "config": {}}), "format version 99"),
        (json.dumps({"format": "rissole_trt.model", "version": 1, "config": {"image_size": 64}}), "missing keys"),
    ],
)
def test_load_bad_config_file(saved, content, message):
    (saved / CONFIG_FILE).write_text(content)
    with pytest.raises(RissoleModelError, match=message) as info:
        RissoleModel.load(saved)
    assert CONFIG_FILE in str(info.value)


def test_load_invalid_config_values(saved):
    doc = json.loads((saved / CONFIG_FILE).read_text())
    doc["config"]["unet"]["channels"] = [12, 32]
    (saved / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(RissoleModelError, match="divisible by n_groups=8"):
        RissoleModel.load(saved)


# ----------------------------------------------------------------------------- reference import


@pytest.fixture
def ref_state():
    return torch.load(paths("ref_add_")["checkpoint"], weights_only=True)


def _write_ckpt(ckpt, tmp_path):
    path = tmp_path / "best_model.pt"
    torch.save(ckpt, path)
    return path


def _import(checkpoint, **overrides):
    p = paths("ref_add_")
    p["checkpoint"] = checkpoint
    p.update(overrides)
    return RissoleModel.from_reference(**p)


def test_import_not_a_checkpoint(tmp_path):
    with pytest.raises(RissoleModelError, match="not a readable PyTorch checkpoint"):
        _import(paths("ref_add_")["unet_config"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        _import(tmp_path / "missing.pt")


def test_import_truncated_checkpoint(tmp_path):
    data = paths("ref_add_")["checkpoint"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(RissoleModelError, match="cut.pt: not a readable PyTorch checkpoint"):
        _import(tmp_path / "cut.pt")


def test_import_vqgan_only_checkpoint_as_ddpm_checkpoint(ref_state, tmp_path):
    vq = {k[len("vae_model."):]: v for k, v in ref_state["model_state_dict"].items() if k.startswith("vae_model.")}
    with pytest.raises(RissoleModelError, match="no 'eps_model.' \\(UNet\\) keys.*vqgan_checkpoint="):
        _import(_write_ckpt({"model_state_dict": vq}, tmp_path))


def test_import_ddpm_checkpoint_as_a_part(tmp_path):
    p = paths("ref_add_")
    ckpt = p.pop("checkpoint")
    with pytest.raises(RissoleModelError, match="whole DDPM checkpoint"):
        RissoleModel.from_reference(unet_checkpoint=ckpt, vqgan_checkpoint=ckpt, **p)


def test_import_missing_key(ref_state, tmp_path):
    del ref_state["model_state_dict"]["eps_model.final_conv.weight"]
    with pytest.raises(RissoleModelError, match=r"missing keys unet\.out_conv\.weight"):
        _import(_write_ckpt(ref_state, tmp_path))


def test_import_unknown_key(ref_state, tmp_path):
    ref_state["model_state_dict"]["eps_model.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(RissoleModelError, match=r"unknown keys \['extra_head.weight'\]"):
        _import(_write_ckpt(ref_state, tmp_path))


def test_import_shape_mismatch_names_both_keys(ref_state, tmp_path):
    ref_state["model_state_dict"]["eps_model.final_conv.weight"] = torch.zeros(10, 16, 3, 3)
    with pytest.raises(RissoleModelError, match=r"unet\.out_conv\.weight \(eps_model\.final_conv\.weight\): \[10, 16, 3, 3\] instead of \[10, 16, 1, 1\]"):
        _import(_write_ckpt(ref_state, tmp_path))


def test_import_altered_sinusoid_table(ref_state, tmp_path):
    ref_state["model_state_dict"]["eps_model.time_embedding.pos_embedding"] += 0.1
    with pytest.raises(RissoleModelError, match="not the fixed sinusoid table"):
        _import(_write_ckpt(ref_state, tmp_path))


def test_import_k_is_checked_against_the_weights():
    with pytest.raises(RissoleModelError, match="k=4 was given.*k=3"):
        _import(paths("ref_add_")["checkpoint"], k=4)


def _yaml_with(tmp_path, name, change):
    data = yaml.safe_load(paths("ref_add_")[name].read_text())
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("unet_config", lambda d: d.update(use_addition=False), "only the 'add' conditioning"),
        ("unet_config", lambda d: d.update(mystery=1), r"UNet config: unknown keys \['mystery'\]"),
        ("unet_config", lambda d: d.pop("conv_config"), r"missing keys \['conv_config'\]"),
        ("ddpm_config", lambda d: d.update(beta_schedule="exotic"), "unknown schedule 'exotic'"),
        ("ddpm_config", lambda d: d.update(beta_1=0.5), "beta_1 < beta_2"),
        ("vqgan_config", lambda d: d["model"]["autoencoder_cfg"].update(channels=[12, 32]), "divisible by n_groups=8"),
    ],
)
def test_import_bad_yaml(tmp_path, name, change, message):
    with pytest.raises(RissoleModelError, match=message):
        _import(paths("ref_add_")["checkpoint"], **{name: _yaml_with(tmp_path, name, change)})


def test_import_invalid_yaml_file(tmp_path):
    bad = tmp_path / "unet.yaml"
    bad.write_text("channels: [16, 32\n")
    with pytest.raises(RissoleModelError, match="invalid YAML"):
        _import(paths("ref_add_")["checkpoint"], unet_config=bad)


def test_import_image_size_must_fit_the_unet():
    """48x48 images give 12x12 latents and 6x6 blocks, which a 2-level UNet cannot halve twice."""
    with pytest.raises(RissoleModelError, match="multiple of 2\\*\\*len\\(channels\\)=4"):
        _import(paths("ref_add_")["checkpoint"], image_size=48)

