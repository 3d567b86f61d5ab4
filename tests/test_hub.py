"""`convert --to-hub` writes a folder laid out as SAELens Hub repos are; `--from-hub` reads such a
folder locally, or offline from the Hub cache (no network in these tests)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from mammosae_jax.cli import convert as convert_cli
from mammosae_jax.formats import hub
from mammosae_jax.formats.common import FormatError
from mammosae_jax.models.sae import SAEConfig, init_params
from mammosae_jax.models.sae_io import SAE, load_sae, save_sae

D, N = 8, 24
X = np.random.default_rng(0).normal(size=(6, D)).astype(np.float32)


def _run(tmp_path, variant="topk", **kw) -> SAE:
    config = SAEConfig(D, N, variant=variant, k=4 if variant == "topk" else None, **kw)
    sae = SAE(config, init_params(config, jax.random.key(1)))
    save_sae(tmp_path / "run", sae)
    return sae


def test_to_hub_writes_the_saelens_repo_layout_and_from_hub_reads_it_back(tmp_path, capsys):
    sae = _run(tmp_path)
    assert convert_cli.main([str(tmp_path / "run"), str(tmp_path / "repo"), "--to-hub", "topk_24"]) == 0
    assert sorted(str(p.relative_to(tmp_path / "repo")) for p in (tmp_path / "repo").rglob("*")) == [
        "README.md", "topk_24", "topk_24/cfg.json", "topk_24/sae_weights.safetensors"]
    card = (tmp_path / "repo" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saelens\n") and 'SAE.from_pretrained("<repo_id>", "topk_24")' in card
    assert json.loads((tmp_path / "repo" / "topk_24" / "cfg.json").read_text())["architecture"] == "topk"
    # the repo's only SAE needs no id; naming it works too
    assert convert_cli.main(["--from-hub", str(tmp_path / "repo"), str(tmp_path / "back")]) == 0
    assert convert_cli.main(["--from-hub", str(tmp_path / "repo"), "topk_24", str(tmp_path / "back2")]) == 0
    for back in ("back", "back2"):
        got = load_sae(tmp_path / back)
        assert got.config == sae.config
        np.testing.assert_array_equal(np.asarray(got.encode(X)), np.asarray(sae.encode(X)))
    assert "wrote" in capsys.readouterr().out


def test_from_hub_with_several_saes_asks_for_one_by_name(tmp_path, capsys):
    _run(tmp_path)
    for sae_id in ("a", "b"):
        assert convert_cli.main([str(tmp_path / "run"), str(tmp_path / "repo"), "--to-hub", sae_id, "--force"]) == 0
    assert convert_cli.main(["--from-hub", str(tmp_path / "repo"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'repo'}: no cfg.json here; name one of its SAE folders after it (found: a, b)\n"
    assert convert_cli.main(["--from-hub", str(tmp_path / "repo"), "c", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'repo' / 'c'}: no such file or folder in {tmp_path / 'repo'}\n"


def test_to_hub_refuses_a_file_destination(tmp_path, capsys):
    _run(tmp_path)
    assert convert_cli.main([str(tmp_path / "run"), str(tmp_path / "x.safetensors"), "--to-hub", "s"]) == 2
    assert capsys.readouterr().err.startswith("error: --to-hub writes a folder")


def test_a_hub_sae_folder_is_read_offline_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = _run(tmp_path, variant="jumprelu")
    cache = tmp_path / "hf"
    rev = "89abcdef0123456789abcdef0123456789abcdef"
    repo_dir = cache / "models--someone--mammo-saes"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(rev)
    assert convert_cli.main([str(tmp_path / "run"), str(repo_dir / "snapshots" / rev), "--to-hub", "layer_x/jumprelu"]) == 0
    folder = hub.resolve_hub_source("someone/mammo-saes", "layer_x/jumprelu", cache_dir=cache)
    assert folder == repo_dir / "snapshots" / rev / "layer_x" / "jumprelu"
    got = load_sae(folder)
    np.testing.assert_array_equal(np.asarray(got.params["threshold"]), np.asarray(sae.params["threshold"]))
    with pytest.raises(FormatError, match=r"^HF_HUB_OFFLINE is set and layer_y/cfg\.json is not in the local Hub cache; "):
        hub.resolve_hub_source("someone/mammo-saes", "layer_y", cache_dir=cache)


def test_the_older_from_hub_form_still_means_file_in_the_default_repo():
    parsed = convert_cli._parser().parse_args(["--from-hub", "out/x.safetensors"])
    assert convert_cli._hub_arguments(parsed) == (hub.HUB_REPO, None, "out/x.safetensors")
    parsed = convert_cli._parser().parse_args(["--from-hub", "other.pt", "out/x.safetensors", "--repo", "a/b"])
    assert convert_cli._hub_arguments(parsed) == ("a/b", "other.pt", "out/x.safetensors")
    parsed = convert_cli._parser().parse_args(["--from-hub", "a/b", "sae_id", "out"])
    assert convert_cli._hub_arguments(parsed) == ("a/b", "sae_id", "out")
