"""The model reproduces the authors' RISSOLE code: eps, decode, encode and a DDPM step, both variants."""

from __future__ import annotations

import pytest
import torch

from rissole_trt.models import RissoleModel, RissoleModelError

from reference_fixtures import VARIANTS, assert_matches_reference, load_io, max_errors, paths


@pytest.fixture(scope="module", params=VARIANTS)
def imported(request):
    prefix = request.param
    return prefix, RissoleModel.from_reference(**paths(prefix))


def test_from_reference_matches_fixture(imported):
    prefix, model = imported
    assert_matches_reference(model, load_io(prefix))


def test_codebook_indices_give_the_reference_encoding(imported):
    prefix, model = imported
    io = load_io(prefix)
    indices = model.encode_indices(io["img"])
    assert indices.shape == (2, 16, 16) and indices.dtype == torch.int64
    assert int(indices.max()) < model.config.autoencoder.n_embeddings
    codebook = model.autoencoder.codebook
    torch.testing.assert_close(codebook[indices].permute(0, 3, 1, 2), io["enc"], rtol=0, atol=1e-6)
    with torch.no_grad():
        images = model.autoencoder.decode_indices(indices)
    torch.testing.assert_close(images, model.decode(io["enc"]), rtol=0, atol=1e-6)


def test_import_infers_variant_k_and_position_embedding(imported):
    prefix, model = imported
    report = model.reference_import
    assert report.k == 3 == model.config.unet.k == int(load_io(prefix)["k"])
    if prefix == "ref_add_":
        assert (report.variant, report.position_embedding) == ("rissole_main", False)
        assert model.unet.pos_embed is None
        # HEAD computes a position MLP but never uses it: dropped by name.
        assert "eps_model.pos_embedding.mlp.0.weight" in report.dropped
    else:
        assert (report.variant, report.position_embedding) == ("rissole_alt", True)
        assert model.unet.pos_embed is not None
    assert "eps_model.cond_embedding.weight" in report.dropped
    assert "eps_model.down_blocks.0.0.cond_emb.1.running_mean" in report.dropped
    assert not any(key.startswith("vae_model.") for key in report.dropped)


def test_parameter_count_is_the_used_parameters(imported):
    prefix, model = imported
    state = torch.load(paths(prefix)["checkpoint"], weights_only=True)["model_state_dict"]
    dropped = model.reference_import.dropped
    # Every non-dropped reference tensor is a parameter of ours, and nothing else is.
    kept = sum(v.numel() for k, v in state.items() if k not in dropped)
    counts = model.parameter_count()
    assert counts["total"] == kept == counts["unet"] + counts["autoencoder"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_position_embedding_matters_for_the_alt_variant():
    io = load_io("ref_addpos_")
    model = RissoleModel.from_reference(**paths("ref_addpos_"), position_embedding=False)
    assert not model.reference_import.position_embedding
    assert "eps_model.down_blocks.0.0.pos_emb.weight" in model.reference_import.dropped
    # Without the embedding the model is a different one: eps moves well beyond the tolerance.
    assert max_errors(model, io)["eps"] > 1e-2


def test_position_embedding_cannot_be_forced_on_main_weights():
    with pytest.raises(RissoleModelError, match="no position projections"):
        RissoleModel.from_reference(**paths("ref_add_"), position_embedding=True)


@pytest.mark.parametrize("prefix", VARIANTS)
def test_separate_vqgan_and_unet_checkpoints(prefix, tmp_path):
    """train_vqgan.py and train_ddpm.py also write the VQ-GAN and the UNet alone (no key prefix)."""
    p = paths(prefix)
    ckpt = torch.load(p.pop("checkpoint"), weights_only=True)
    for part, prefix_key in (("unet", "eps_model."), ("vqgan", "vae_model.")):
        state = {k[len(prefix_key):]: v for k, v in ckpt["model_state_dict"].items() if k.startswith(prefix_key)}
        torch.save({"epoch": 1, "model_state_dict": state, "global_train_step": 10}, tmp_path / f"{part}.pt")
    model = RissoleModel.from_reference(
        vqgan_checkpoint=tmp_path / "vqgan.pt", unet_checkpoint=tmp_path / "unet.pt", **p
    )
    assert_matches_reference(model, load_io(prefix))


@pytest.mark.parametrize("prefix", VARIANTS)
def test_save_load_round_trip_matches_fixture(prefix, tmp_path):
    model = RissoleModel.from_reference(**paths(prefix))
    model.save(tmp_path / "model")
    loaded = RissoleModel.load(tmp_path / "model")
    assert loaded.config == model.config
    assert not loaded.training
    assert_matches_reference(loaded, load_io(prefix))


@pytest.mark.parametrize("prefix", VARIANTS)
def test_convert_cli_matches_fixture(prefix, tmp_path, capsys):
    from rissole_trt import cli

    p = paths(prefix)
    out = tmp_path / "converted"
    rc = cli.main([
        "convert", "--checkpoint", str(p["checkpoint"]), "--unet-config", str(p["unet_config"]),
        "--vqgan-config", str(p["vqgan_config"]), "--ddpm-config", str(p["ddpm_config"]), "-o", str(out),
    ])
    assert rc in (0, None)
    printed = capsys.readouterr().out
    assert "k = 3" in printed and str(out) in printed
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors"]
    assert_matches_reference(RissoleModel.load(out), load_io(prefix))


def test_convert_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    from rissole_trt import cli

    p = paths("ref_add_")
    rc = cli.main([
        "convert", "--checkpoint", str(p["unet_config"]), "--unet-config", str(p["unet_config"]),
        "--vqgan-config", str(p["vqgan_config"]), "--ddpm-config", str(p["ddpm_config"]), "-o", str(tmp_path / "out"),
    ])
    assert rc == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
