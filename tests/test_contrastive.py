"""`contrastive_step` against the per-prefix algorithm of the original code, run in PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.contrastive import ContrastiveConfig, contrastive_step, make_contrastive_step
from lr_jax.data.tokenizer_pair import check_tokenizer_pair
from lr_jax.models import from_pretrained
from lr_jax.sharding import Layout, make_mesh
from tests.helpers import load_hf, make_tiny_hf

VOCAB = 512


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  d = tmp_path_factory.mktemp("pair")
  # Expert and amateur with different row counts: only the shared rows are compared.
  expert = make_tiny_hf(d, "qwen2", name="expert", vocab_size=VOCAB + 8, init_std=0.3, seed=1, tokenizer=False)
  amateur = make_tiny_hf(d, "qwen2", name="amateur", vocab_size=VOCAB, hidden_size=32, num_layers=1,
                         init_std=0.3, seed=2, tokenizer=False)
  return expert, amateur


def _batch(rng, b=3, p=7, t=9):
  prompt_lens = [p, p - 3, p - 1]
  comp_lens = [t, t - 4, 1]
  pt = np.zeros((b, p), np.int32)
  pm = np.zeros((b, p), bool)
  ct = np.zeros((b, t), np.int32)
  cm = np.zeros((b, t), bool)
  for i in range(b):
    pt[i, p - prompt_lens[i]:] = rng.integers(0, VOCAB, prompt_lens[i])
    pm[i, p - prompt_lens[i]:] = True
    ct[i, :comp_lens[i]] = rng.integers(0, VOCAB, comp_lens[i])
    cm[i, :comp_lens[i]] = True
  return {"prompt_tokens": pt, "prompt_mask": pm, "completion_tokens": ct, "completion_mask": cm}


def _per_prefix_reference(expert_dir, amateur_dir, batch, alpha):
  """The original algorithm on token ids: one forward of each model per prefix, last position only."""
  import torch
  e, a = load_hf(expert_dir), load_hf(amateur_dir)
  out = []
  for i in range(batch["prompt_tokens"].shape[0]):
    prompt = batch["prompt_tokens"][i][batch["prompt_mask"][i]].tolist()
    comp = batch["completion_tokens"][i][batch["completion_mask"][i]].tolist()
    rows = []
    for t in range(len(comp)):
      ids = torch.tensor([prompt + comp[:t]])
      with torch.no_grad():
        le = e(ids).logits[0, -1, :VOCAB].double()
        la = a(ids).logits[0, -1, :VOCAB].double()
      lpe, lpa = torch.log_softmax(le, -1), torch.log_softmax(la, -1)
      kl = float((lpe.exp() * (lpe - lpa)).sum())
      pe = lpe.exp()
      mask = pe >= alpha * pe.max()
      v = torch.where(mask, lpe - lpa, torch.tensor(-np.inf, dtype=torch.float64))
      v = torch.softmax(v, -1)
      rows.append((kl, v.numpy()))
    out.append(rows)
  return out


def test_one_pass_scoring_equals_per_prefix_algorithm(pair):
  expert_dir, amateur_dir = pair
  batch = _batch(np.random.default_rng(0))
  e = from_pretrained(expert_dir, dtype=jnp.float32).model
  a = from_pretrained(amateur_dir, dtype=jnp.float32).model
  ref = _per_prefix_reference(expert_dir, amateur_dir, batch, alpha=0.2)
  # keeps about half the steps; halfway between two of them, so no step's KL sits on the threshold
  # (the median of an odd count is one, and the two implementations differ in the last ulps)
  kls = np.sort([kl for rows in ref for kl, _ in rows])
  beta = float(kls[len(kls) // 2 - 1] + kls[len(kls) // 2]) / 2
  assert np.min(np.abs(kls - beta)) > 1e-4
  cfg = ContrastiveConfig(alpha=0.2, beta=beta, top_k=VOCAB, valid_vocab=VOCAB, chunk_size=8)
  out = jax.device_get(contrastive_step(nnx.split(e), nnx.split(a), batch, cfg))
  n_kept = 0
  for i, rows in enumerate(ref):
    for t, (kl, v) in enumerate(rows):
      kept = kl > beta
      assert out.kl[i, t] == pytest.approx(kl, abs=2e-5, rel=1e-5)
      assert bool(out.kept[i, t]) == kept
      dense = np.zeros(VOCAB)
      np.add.at(dense, out.target_ids[i, t], out.target_weights[i, t])
      np.testing.assert_allclose(dense, v, atol=1e-5)
      n_kept += kept
    assert not out.kept[i, len(rows):].any(), "padding steps are never kept"
  assert 0 < n_kept < sum(map(len, ref)), "the fixture should keep some steps and drop others"


def test_chunk_size_does_not_change_results(pair):
  batch = _batch(np.random.default_rng(1))
  e = nnx.split(from_pretrained(pair[0], dtype=jnp.float32).model)
  a = nnx.split(from_pretrained(pair[1], dtype=jnp.float32).model)
  outs = [jax.device_get(contrastive_step(e, a, batch, ContrastiveConfig(valid_vocab=VOCAB, chunk_size=c)))
          for c in (1, 5, 64)]
  for o in outs[1:]:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), outs[0], o)


def test_reference_preset_never_keeps_the_first_token(pair):
  batch = _batch(np.random.default_rng(2))
  e = nnx.split(from_pretrained(pair[0], dtype=jnp.float32).model)
  a = nnx.split(from_pretrained(pair[1], dtype=jnp.float32).model)
  paper = jax.device_get(contrastive_step(e, a, batch, ContrastiveConfig(valid_vocab=VOCAB, beta=0.0)))
  ref = jax.device_get(contrastive_step(e, a, batch, ContrastiveConfig.reference(valid_vocab=VOCAB, beta=0.0)))
  assert paper.kept[:, 0].all() and not ref.kept[:, 0].any()
  np.testing.assert_array_equal(paper.kept[:, 1:], ref.kept[:, 1:])


def test_sharded_equals_unsharded(pair):
  batch = _batch(np.random.default_rng(3))
  batch = {k: np.concatenate([v, v[::-1]]) [:4] for k, v in batch.items()}  # 4 rows: divisible by data axes
  cfg = ContrastiveConfig(valid_vocab=VOCAB, chunk_size=16)
  single = jax.device_get(contrastive_step(nnx.split(from_pretrained(pair[0], dtype=jnp.float32).model),
                                           nnx.split(from_pretrained(pair[1], dtype=jnp.float32).model),
                                           batch, cfg))
  layout = Layout.create(make_mesh((2, 2, 2)), "sample")
  e = from_pretrained(pair[0], dtype=jnp.float32, layout=layout).model
  a = from_pretrained(pair[1], dtype=jnp.float32, layout=layout).model
  eg, es = nnx.split(e)
  ag, as_ = nnx.split(a)
  step = make_contrastive_step(eg, ag, cfg)
  sharded = jax.device_get(step(es, as_, {k: jnp.asarray(v) for k, v in batch.items()}))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), single, sharded)


class _FakeTok:
  def __init__(self, vocab, added, merges=("a b",)):
    import json
    self._vocab, self._added = dict(vocab), dict(added)
    model = {"vocab": {**vocab, **added}, "merges": list(merges)}
    self.backend_tokenizer = type("B", (), {"to_str": lambda s: json.dumps({"model": model})})()

  def get_added_vocab(self):
    return dict(self._added)

  def __len__(self):
    return len(self._vocab) + len(self._added)


def test_tokenizer_pair_with_other_regular_vocab_is_refused():
  e = _FakeTok({"a": 0, "b": 1}, {"<s>": 2})
  a = _FakeTok({"a": 0, "c": 1}, {"<s>": 2})
  with pytest.raises(ValueError, match="differ in their regular vocabulary"):
    check_tokenizer_pair(e, a)
  assert not check_tokenizer_pair(e, a, allow_mismatch=True)["regular_vocab_identical"]


def test_tokenizer_pair_differing_only_in_special_tokens_is_accepted_with_warning(caplog):
  e = _FakeTok({"a": 0, "b": 1}, {"<s>": 2, "<think>": 3})
  a = _FakeTok({"a": 0, "b": 1}, {"<s>": 2})
  with caplog.at_level("WARNING"):
    report = check_tokenizer_pair(e, a)
  assert report["added_tokens_only_in"]["expert"] == {"<think>": 3}
  assert "<think>" in caplog.text


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("completion_mask"), "batch lacks ['completion_mask']"),
    (lambda b: b.update(prompt_tokens=b["prompt_tokens"][:, :0], prompt_mask=b["prompt_mask"][:, :0]),
     "need one batch size B, P >= 1 and T >= 1"),
    (lambda b: b.update(completion_tokens=b["completion_tokens"][:2]), "need one batch size B"),
    (lambda b: b.update(completion_mask=b["completion_mask"].astype(np.float32)),
     "batch['completion_mask'] should be a 2-D bool array [B, T], got float32 [3, 9]"),
    (lambda b: b.update(prompt_tokens=b["prompt_tokens"].astype(np.float32)), "should be a 2-D int array [B, P]"),
    (lambda b: b["completion_tokens"].__setitem__((0, 0), VOCAB), f"holds ids outside [0, {VOCAB})"),
    (lambda b: b.update(prompt_mask=b["prompt_mask"][:, ::-1].copy()),
     "prompts must be left-padded (the completion follows the last prompt slot), but batch['prompt_mask'] of row 1 "
     "ends in padding"),
])
def test_a_batch_that_would_score_wrong_positions_is_refused_in_one_line(pair, change, message):
  e = from_pretrained(pair[0], dtype=jnp.float32).model
  a = from_pretrained(pair[1], dtype=jnp.float32).model
  batch = _batch(np.random.default_rng(0))
  change(batch)
  with pytest.raises(ValueError) as error:
    contrastive_step(nnx.split(e), nnx.split(a), batch)
  assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("pad_id", [-1, 10 * VOCAB])  # 10 * VOCAB: past both tables
def test_integer_masks_and_any_pad_id_at_masked_positions_score_as_before(pair, pad_id):
  e = nnx.split(from_pretrained(pair[0], dtype=jnp.float32).model)
  a = nnx.split(from_pretrained(pair[1], dtype=jnp.float32).model)
  batch = _batch(np.random.default_rng(0))
  want = contrastive_step(e, a, batch)
  other = {**batch, "prompt_mask": batch["prompt_mask"].astype(np.int32),
           "completion_mask": batch["completion_mask"].astype(np.int32),
           "prompt_tokens": np.where(batch["prompt_mask"], batch["prompt_tokens"], pad_id),
           "completion_tokens": np.where(batch["completion_mask"], batch["completion_tokens"], pad_id)}
  got = contrastive_step(e, a, other)
  assert got.kept.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(got.kept), np.asarray(want.kept))
  np.testing.assert_allclose(np.asarray(got.kl), np.asarray(want.kl), rtol=1e-6, atol=1e-6)


def test_config_out_of_range_is_refused():
  for bad in ({"alpha": 0.0}, {"top_k": 0}, {"chunk_size": 0}):
    with pytest.raises(ValueError, match="ContrastiveConfig: expected 0 < alpha <= 1"):
      ContrastiveConfig(**bad)
