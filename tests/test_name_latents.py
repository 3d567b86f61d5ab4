"""Naming latents in CLIP space (JAX side, no torch): planted directions, reverse search, prompts, CLI help."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cache.prompt_embeddings import (
    PromptEmbeddingError,
    PromptEmbeddings,
    read_prompt_embeddings,
    write_prompt_embeddings,
)
from mammosae_jax.analysis.naming import NamingError, match_prompts, name_latents, similarity_table
from mammosae_jax.analysis.naming_run import format_table, parse_latent_ids
from mammosae_jax.cli.name_latents import main
from mammosae_jax.analysis.prompts import DEFAULT_PROMPTS, PromptError, default_prompts, load_prompts

P, E, C, N = 12, 8, 24, 40


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def world():
    """Random unit prompts, an image projection with a large bias, and decoder rows, three of them planted."""
    rng = np.random.default_rng(0)
    texts = tuple(f"prompt {i}" for i in range(P))
    emb = PromptEmbeddings(texts, tuple("a" if i < 6 else "b" for i in range(P)),
                           unit(rng.normal(size=(P, E))).astype(np.float32),
                           rng.normal(size=(E, C)).astype(np.float32),
                           (5 * rng.normal(size=E)).astype(np.float32), {})
    W_dec = unit(rng.normal(size=(N, C))).astype(np.float32)
    planted = {7: 3, 21: 3, 30: 9}  # latent -> prompt
    for j, p in planted.items():
        pre = np.linalg.lstsq(emb.image_proj_EC, emb.text_PE[p], rcond=None)[0]  # W_img @ pre = t_p
        W_dec[j] = unit(pre)
    return emb, W_dec, planted


def reference_cosines(W_dec, emb, bias=False, center=False):
    d = W_dec.astype(np.float64) @ emb.image_proj_EC.T.astype(np.float64)
    if bias:
        d = d + emb.image_proj_bias_E
    t = emb.text_PE.astype(np.float64)
    if center:
        t = t - t.mean(0)
    return unit(d) @ unit(t).T


def test_planted_latents_are_named_after_their_prompt(world):
    emb, W_dec, planted = world
    latents = np.array(sorted(planted))
    names = name_latents(W_dec, emb, latents, k=3)
    np.testing.assert_array_equal(names.latents_L, latents)
    np.testing.assert_array_equal(names.prompt_LK[:, 0], [planted[j] for j in latents])
    np.testing.assert_allclose(names.cosine_LK[:, 0], 1.0, atol=1e-5)
    keep = np.linalg.norm(W_dec[latents] @ emb.image_proj_EC.T, axis=1) / np.linalg.norm(W_dec[latents], axis=1)
    np.testing.assert_allclose(names.proj_norm_L, keep, rtol=1e-5)


def test_reverse_search_finds_the_planted_latents(world):
    emb, W_dec, _ = world
    m = match_prompts(W_dec, emb, k=3)
    assert set(m.latent_PK[3, :2].tolist()) == {7, 21}
    assert m.latent_PK[9, 0] == 30
    np.testing.assert_allclose(m.cosine_PK[3, :2], 1.0, atol=1e-5)
    only = match_prompts(W_dec, emb, np.array([30, 2, 5]), k=2)
    assert only.latent_PK[9, 0] == 30 and set(only.latent_PK.ravel()) <= {30, 2, 5}


@pytest.mark.parametrize("bias,center", [(False, False), (True, False), (False, True)])
def test_scores_equal_an_independent_float64_computation(world, bias, center):
    emb, W_dec, _ = world
    ref = reference_cosines(W_dec, emb, bias, center)
    latents = np.arange(N)
    np.testing.assert_allclose(similarity_table(W_dec, emb, latents, include_bias=bias, center=center), ref,
                               atol=2e-5)
    names = name_latents(W_dec, emb, latents, k=4, include_bias=bias, center=center)
    np.testing.assert_array_equal(names.prompt_LK, np.argsort(-ref, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(names.cosine_LK, -np.sort(-ref, axis=1)[:, :4], atol=2e-5)
    m = match_prompts(W_dec, emb, k=5, include_bias=bias, center=center)
    np.testing.assert_array_equal(m.latent_PK, np.argsort(-ref.T, axis=1, kind="stable")[:, :5])


def test_projection_bias_is_left_out_by_default(world):
    emb, W_dec, planted = world
    with_bias = name_latents(W_dec, emb, np.array([7, 30]), include_bias=True)
    assert with_bias.cosine_LK[:, 0].max() < 0.99  # the big shared bias drowns the latent's direction


def test_bad_inputs(world):
    emb, W_dec, _ = world
    with pytest.raises(NamingError, match=r"latent ids \[40, -1\] are outside 0..39"):
        name_latents(W_dec, emb, np.array([1, 40, -1]))
    with pytest.raises(NamingError, match=r"the SAE's decoder directions have 23 dims but the CLIP "
                                          r"image projection takes 24 inputs"):
        name_latents(W_dec[:, :23], emb, np.array([1]))


def test_prompt_embedding_file_round_trip(world, tmp_path):
    emb, _, _ = world
    path = write_prompt_embeddings(tmp_path / "e.safetensors", emb._replace(meta={"key": "abc", "max_length": "256"}))
    back = read_prompt_embeddings(path)
    assert back.texts == emb.texts and back.groups == emb.groups and back.meta["key"] == "abc"
    for a, b in zip(back[2:5], emb[2:5]):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(PromptEmbeddingError, match="prompt-embedding file not found"):
        read_prompt_embeddings(tmp_path / "missing.safetensors")


def test_default_prompts_cover_the_clinical_groups():
    ps = default_prompts()
    for group in ("mass", "calcification", "density", "nipple", "skin", "pectoral muscle", "background", "artefacts"):
        assert group in ps.groups
    assert len(set(ps.texts)) == len(ps.texts) == sum(len(v) for v in DEFAULT_PROMPTS.values())


def test_prompt_files(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps({"mass": ["a  mass", "spiculated mass"], "other": ["x"]}))
    ps = load_prompts(tmp_path / "g.json")
    assert ps.texts == ("a mass", "spiculated mass", "x") and ps.groups == ("mass", "mass", "other")
    (tmp_path / "l.json").write_text(json.dumps(["one", "two"]))
    assert load_prompts(tmp_path / "l.json").groups == ("custom", "custom")
    (tmp_path / "d.json").write_text(json.dumps(["one", "one "]))
    with pytest.raises(PromptError, match="duplicate prompts: 'one'"):
        load_prompts(tmp_path / "d.json")
    (tmp_path / "e.json").write_text(json.dumps({"g": ["ok", ""]}))
    with pytest.raises(PromptError, match="group 'g' holds ''; prompts must be non-empty strings"):
        load_prompts(tmp_path / "e.json")
    with pytest.raises(PromptError, match="prompt file not found"):
        load_prompts(tmp_path / "none.json")


def test_parse_latent_ids():
    np.testing.assert_array_equal(parse_latent_ids("3, 17,100-102,3"), [3, 17, 100, 101, 102])
    with pytest.raises(NamingError, match="expected comma-separated ids or ranges"):
        parse_latent_ids("3,x")


def test_table_lists_the_best_prompts(world):
    emb, W_dec, _ = world
    table = format_table(name_latents(W_dec, emb, np.array([7, 30]), k=3), emb)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["latent", "kept"] and len(lines) == 3
    assert lines[1].split()[0] == "7" and "prompt 3 (+1.000)" in lines[1]
    assert lines[2].split()[0] == "30" and "prompt 9 (+1.000)" in lines[2]


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--clip-checkpoint", "--tokenizer", "--sae", "--prompts", "--latents", "--ranking", "--label",
                 "--top", "--out", "--embeddings", "--include-projection-bias"):
        assert flag in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--sae", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope.safetensors" in err
