"""End to end: tiny CLIP checkpoint + tokenizer + SAE with planted latents -> names, reverse search, cache."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import text_tower_data as td
import torch
from PIL import Image
from transformers import BertTokenizer

from mammosae_jax.models.sae_io import SAE, save_sae
from mammosae_jax.cli.name_latents import main
from mammosae_jax.analysis.prompts import default_prompts
from mammosae_jax.analysis.ranking import make_ranking, write_ranking
from mammosae_jax.models.sae import SAEConfig

N_LATENTS = 24
CALC, DENSE = "suspicious calcification", "the breasts are extremely dense"
PLANTED = {11: CALC, 5: CALC, 17: DENSE}


def reference_text_embedding(clip: td.TinyClip, vocab_file, text: str) -> np.ndarray:
    """Mammo-CLIP's encode_text for one unpadded prompt: [SEP] hidden state, projection, unit norm."""
    tok = BertTokenizer(vocab=str(vocab_file))
    with torch.no_grad():
        h = clip.bert(**tok(text, return_tensors="pt")).last_hidden_state[0, -1]
        e = (h @ clip.text_proj_weight.T + clip.text_proj_bias).numpy().astype(np.float64)
    return e / np.linalg.norm(e)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    prompts = default_prompts()
    td.write_tokenizer(root / "tok", prompts.texts)
    clip = td.make_tiny_clip(vocab_size=len((root / "tok" / "vocab.txt").read_text().split()))
    td.write_clip_tar(root / "clip.tar", clip)
    td.write_clip_tar(root / "classifier.pth", clip, text=False)

    rng = np.random.default_rng(1)
    W_dec = rng.normal(size=(N_LATENTS, td.D_IN))
    W_img = clip.image_proj_weight.numpy().astype(np.float64)
    for j, text in PLANTED.items():  # least-squares preimage of the prompt through the image projection
        W_dec[j] = np.linalg.lstsq(W_img, reference_text_embedding(clip, root / "tok" / "vocab.txt", text),
                                   rcond=None)[0]
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    params = {"W_enc": rng.normal(size=(td.D_IN, N_LATENTS)).astype(np.float32) * 0.1,
              "b_enc": np.zeros(N_LATENTS, np.float32), "W_dec": W_dec.astype(np.float32),
              "b_dec": np.zeros(td.D_IN, np.float32)}
    save_sae(root / "sae.safetensors", SAE(SAEConfig(d_in=td.D_IN, n_latents=N_LATENTS), params))

    importance = np.zeros((2, N_LATENTS), np.float32)
    importance[1, [11, 5, 17, 2]] = [4.0, 3.0, 2.0, 1.0]
    importance[0] = -importance[1]
    write_ranking(root / "ranking", make_ranking("Suspicious_Calcification", importance))
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def base_args(root, out):
    return ["--clip-checkpoint", str(root / "clip.tar"), "--tokenizer", str(root / "tok"), "--sae",
            str(root / "sae.safetensors"), "--cache-dir", str(root / "cache"), "--out", str(out)]


def test_names_reverse_search_table_figure_and_cache(world, capsys):
    out = world / "out"
    main(base_args(world, out) + ["--ranking", str(world / "ranking"), "--label", "Suspicious_Calcification",
                                  "--ranking-class", "1", "--top", "3", "--k", "3"])
    stdout = capsys.readouterr().out
    rows = read_csv(out / "latent_names.csv")
    assert [(int(r["latent"]), r["source"]) for r in rows if r["k"] == "1"] == [
        (11, "class=1 rank=0"), (5, "class=1 rank=1"), (17, "class=1 rank=2")]
    for r in rows:
        if r["k"] == "1":
            assert r["prompt"] == PLANTED[int(r["latent"])] and float(r["cosine"]) == pytest.approx(1.0, abs=1e-4)
        else:
            assert float(r["cosine"]) < 0.999
    assert next(r for r in rows if r["latent"] == "17" and r["k"] == "1")["group"] == "density"

    reverse = read_csv(out / "prompt_latents.csv")
    calc = [int(r["latent"]) for r in reverse if r["prompt"] == CALC]
    assert set(calc[:2]) == {5, 11} and len(calc) == 10
    assert [int(r["latent"]) for r in reverse if r["prompt"] == DENSE][0] == 17

    summary = json.loads((out / "name_latents_summary.json").read_text())
    assert summary["embeddings_computed_now"] is True and summary["pooling"] == "eos"
    assert summary["top_prompt"] == {"11": CALC, "5": CALC, "17": DENSE}
    with Image.open(out / "latent_names.png") as im:
        assert im.size[0] > 200 and im.size[1] > 100
    assert "(computed)" in stdout and f"{CALC} (+1.000)" in stdout
    assert len(list((world / "cache").glob("prompt_embeddings_*.safetensors"))) == 1

    # Second run: the embeddings come from the cache; then from the file alone (no checkpoint, no tokenizer).
    main(base_args(world, world / "out2") + ["--latents", "17,3"])
    assert "(cached)" in capsys.readouterr().out
    s2 = json.loads((world / "out2" / "name_latents_summary.json").read_text())
    assert s2["embeddings_computed_now"] is False and s2["embeddings_file"] == summary["embeddings_file"]
    main(["--embeddings", summary["embeddings_file"], "--sae", str(world / "sae.safetensors"), "--latents", "17",
          "--out", str(world / "out3")])
    assert read_csv(world / "out3" / "latent_names.csv")[0]["prompt"] == DENSE


def test_other_prompts_get_their_own_cache_entry(world, tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"calcification": [CALC, "benign coarse calcifications"]}))
    main(base_args(world, tmp_path / "o") + ["--prompts", str(tmp_path / "p.json"), "--latents", "5",
                                             "--cache-dir", str(tmp_path / "c")])
    assert "(computed)" in capsys.readouterr().out
    rows = read_csv(tmp_path / "o" / "latent_names.csv")
    assert [r["prompt"] for r in rows] == [CALC, "benign coarse calcifications"]


@pytest.mark.parametrize("case", ["no_text_tower", "no_tokenizer", "both_selections"])
def test_cli_errors(world, tmp_path, capsys, case):
    args = base_args(world, tmp_path / "o") + ["--latents", "1"]
    if case == "no_text_tower":
        args[1] = str(world / "classifier.pth")
        expected = (f"error: {world / 'classifier.pth'} has no text tower (no 'text_encoder.text_encoder.*' "
                    "tensors): give the pre-trained CLIP checkpoint (e.g. b5-model-best-epoch-7.tar), not a "
                    "downstream classifier\n")
    elif case == "no_tokenizer":
        args[3] = str(tmp_path / "Bio_ClinicalBERT")
        expected = (f"error: tokenizer folder not found: {tmp_path / 'Bio_ClinicalBERT'} (give a local copy of "
                    "Bio_ClinicalBERT, the folder holding its vocab.txt)\n")
    else:
        args += ["--ranking", str(world / "ranking"), "--label", "Suspicious_Calcification"]
        expected = "error: give --latents or --ranking, not both\n"
    with pytest.raises(SystemExit) as e:
        main(args + ["--cache-dir", str(tmp_path / "c")])
    assert e.value.code == 2
    assert capsys.readouterr().err == expected
    assert not (tmp_path / "o" / "latent_names.csv").exists()
