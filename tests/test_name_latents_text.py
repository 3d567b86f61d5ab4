"""The PyTorch text tower: loading from the CLIP layout, Mammo-CLIP's pooling, the embedding cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import text_tower_data as td
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from cache.prompt_embeddings import cache_file, cache_key, file_sha256, read_prompt_embeddings, tokenizer_sha256
from extract.text_tower import (
    TextTowerError,
    build_text_tower,
    compute_prompt_embeddings,
    infer_bert_config,
    load_tokenizer,
    pool,
    read_clip_text_parts,
    resolve_bert_config,
)
from mammosae_jax.analysis.prompts import default_prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    prompts = default_prompts()
    vocab_size = td.write_tokenizer(root / "tok", prompts.texts)
    clip = td.make_tiny_clip(vocab_size)
    td.write_clip_tar(root / "clip.tar", clip)
    return root, prompts, clip


def reference_embedding(clip: td.TinyClip, vocab_file, text: str) -> np.ndarray:
    """One prompt, no padding: BERT, hidden state of the last token ([SEP]), projection, unit norm."""
    tok = BertTokenizer(vocab=str(vocab_file))
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        h = clip.bert(**ids).last_hidden_state[0, -1]
        e = h @ clip.text_proj_weight.T + clip.text_proj_bias
    assert ids["input_ids"][0, -1].item() == tok.sep_token_id
    return (e / e.norm()).numpy()


def test_reads_the_real_key_layout(setup):
    root, _, clip = setup
    parts = read_clip_text_parts(root / "clip.tar")
    assert set(parts.bert_state) == set(clip.bert.state_dict()) | {"embeddings.position_ids"}
    assert parts.pooling == "eos" and parts.max_length == 256
    assert torch.equal(parts.image_proj_weight, clip.image_proj_weight)
    assert torch.equal(parts.text_proj_bias, clip.text_proj_bias)


def test_prompt_embeddings_match_a_per_prompt_reference(setup, tmp_path):
    root, prompts, clip = setup
    emb = compute_prompt_embeddings(root / "clip.tar", root / "tok", prompts.texts, prompts.groups,
                                    tmp_path / "e.safetensors", meta={"key": "k"}, batch_size=7)
    ref = np.stack([reference_embedding(clip, root / "tok" / "vocab.txt", t) for t in prompts.texts])
    np.testing.assert_allclose(emb.text_PE, ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.text_PE, axis=1), 1.0, atol=1e-6)
    back = read_prompt_embeddings(tmp_path / "e.safetensors")
    assert back.texts == prompts.texts and back.groups == prompts.groups
    np.testing.assert_array_equal(back.text_PE, emb.text_PE)
    np.testing.assert_array_equal(back.image_proj_EC, clip.image_proj_weight.numpy())
    assert back.meta["pooling"] == "eos" and back.meta["key"] == "k"
    assert json.loads(back.meta["bert_config"])["num_attention_heads"] == td.HEADS


def test_no_prompt_token_is_unknown(setup):
    root, prompts, _ = setup
    tok = load_tokenizer(root / "tok")
    ids = tok(list(prompts.texts))["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)


def test_pooling_modes_follow_mammo_clip():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(pool(h, mask, "eos").numpy(), np.stack([h[0, 2], h[1, 3]]))
    np.testing.assert_array_equal(pool(h, mask, "bos").numpy(), h[:, 0].numpy())
    np.testing.assert_allclose(pool(h, mask, "mean").numpy(), np.stack([h[0, :3].mean(0), h[1].mean(0)]))
    with pytest.raises(TextTowerError, match="unknown text pooling 'cls'"):
        pool(h, mask, "cls")


def test_mean_pooling_from_the_checkpoint_config(setup, tmp_path):
    root, prompts, clip = setup
    td.write_clip_tar(tmp_path / "mean.tar", clip, pooling="mean")
    texts = prompts.texts[:3]
    emb = compute_prompt_embeddings(tmp_path / "mean.tar", root / "tok", texts, prompts.groups[:3],
                                    tmp_path / "m.safetensors", meta={})
    tok = BertTokenizer(vocab=str(root / "tok" / "vocab.txt"))
    with torch.no_grad():
        ref = []
        for t in texts:
            e = clip.bert(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0)
            e = e @ clip.text_proj_weight.T + clip.text_proj_bias
            ref.append((e / e.norm()).numpy())
    np.testing.assert_allclose(emb.text_PE, np.stack(ref), atol=2e-5)
    assert emb.meta["pooling"] == "mean"


def test_bert_config_inferred_from_shapes():
    cfg = BertConfig(vocab_size=30, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=96, max_position_embeddings=24, type_vocab_size=2)
    state = BertModel(cfg).state_dict()
    got = infer_bert_config(state)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size"):
        assert getattr(got, field) == getattr(cfg, field), field
    assert got.hidden_act == "gelu" and got.layer_norm_eps == 1e-12
    model = build_text_tower(state, got)  # loads strictly
    assert torch.equal(model.state_dict()["encoder.layer.0.output.dense.weight"],
                       state["encoder.layer.0.output.dense.weight"])


def test_bert_config_errors(setup, tmp_path):
    root, _, clip = setup
    state = clip.bert.state_dict()
    with pytest.raises(TextTowerError, match=r"cannot infer the number of attention heads for hidden size 32 "
                                             r"\(not a multiple of 64\): put the model's config.json"):
        infer_bert_config(state)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": td.HIDDEN, "num_attention_heads": 2,
                                                      "num_hidden_layers": 3, "intermediate_size": 64,
                                                      "vocab_size": state["embeddings.word_embeddings.weight"].shape[0],
                                                      "max_position_embeddings": td.MAX_POS}))
    with pytest.raises(TextTowerError, match=r"does not match the checkpoint's text tower: num_hidden_layers=3 "
                                             r"\(weights: 2\)"):
        resolve_bert_config(state, tmp_path)
    broken = dict(state)
    del broken["encoder.layer.1.output.dense.bias"]
    with pytest.raises(TextTowerError, match=r"ckpt: text tower does not fit a BertModel: missing 1: "
                                             r"encoder.layer.1.output.dense.bias"):
        build_text_tower(broken, resolve_bert_config(state, root / "tok"), "ckpt")


def test_checkpoint_without_text_tower(setup, tmp_path):
    _, _, clip = setup
    td.write_clip_tar(tmp_path / "cls.pth", clip, text=False)
    with pytest.raises(TextTowerError) as e:
        read_clip_text_parts(tmp_path / "cls.pth")
    assert str(e.value) == (f"{tmp_path / 'cls.pth'} has no text tower (no 'text_encoder.text_encoder.*' tensors): "
                            "give the pre-trained CLIP checkpoint (e.g. b5-model-best-epoch-7.tar), "
                            "not a downstream classifier")


def test_tokenizer_errors(setup, tmp_path):
    root, _, _ = setup
    with pytest.raises(TextTowerError) as e:
        load_tokenizer(tmp_path / "nope")
    assert str(e.value) == (f"tokenizer folder not found: {tmp_path / 'nope'} (give a local copy of "
                            "Bio_ClinicalBERT, the folder holding its vocab.txt)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextTowerError, match="has no vocab.txt or tokenizer.json: not a BERT tokenizer folder"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(TextTowerError, match=r"the tokenizer in .* has \d+ tokens but the checkpoint's text tower "
                                             r"has 999 word embeddings"):
        load_tokenizer(root / "tok", vocab_size=999)


def test_cache_key_changes_with_every_input(setup, tmp_path):
    root, prompts, _ = setup
    ck, tk = file_sha256(root / "clip.tar"), tokenizer_sha256(root / "tok")
    base = cache_key(ck, prompts.texts, tk)
    assert base == cache_key(ck, list(prompts.texts), tk)
    others = {cache_key("0" * 64, prompts.texts, tk), cache_key(ck, prompts.texts[:-1], tk),
              cache_key(ck, prompts.texts, "1" * 64), cache_key(ck, prompts.texts, tk, "mean"),
              cache_key(ck, prompts.texts, tk, None, 128)}
    assert base not in others and len(others) == 5
    assert cache_file(tmp_path, base).name == f"prompt_embeddings_{base[:16]}.safetensors"
    (tmp_path / "tok2").mkdir()
    (tmp_path / "tok2" / "vocab.txt").write_text((root / "tok" / "vocab.txt").read_text() + "extra\n")
    assert tokenizer_sha256(tmp_path / "tok2") != tk
