"""distill_step: the loss is the original per-sample KL, packed gradients equal per-sample ones, the
optimizer is the recipe's, only adapters move, and 8 sharded devices compute what one device does.

One tiny random Qwen2 (hidden 32, 2 layers, 256 embedding rows of which 250 are "tokenizer" ids) in
fp32, highest matmul precision; 6 synthetic trajectories with 3-6 kept steps and 4-slot targets.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lr_jax.data.packing import PackedUpdates, PackingConfig
from lr_jax.distill import (DistillConfig, init_train_state, lr_schedule, make_distill_step, make_loss_and_grads,
                            make_optimizer, shard_batch)
from lr_jax.models import from_pretrained
from lr_jax.models.lora import LoRAConfig, LoRAParam, apply_lora, split_trainable, to_peft_tensors
from lr_jax.sharding import Layout, make_mesh, shard_state
from tests.data.test_packing import make_records
from tests.helpers import load_hf, make_tiny_hf

torch = pytest.importorskip("torch")

VOCAB, VALID = 256, 250
STEPS = 8  # supervised steps per update


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  return make_tiny_hf(tmp_path_factory.mktemp("base"), "qwen2", vocab_size=VOCAB, hidden_size=32,
                      intermediate_size=64, tokenizer=False)


@pytest.fixture(scope="module")
def records():
  return make_records([4, 6, 3, 5, 3, 4], seed=1, vocab=VALID)


def lora_model(base_dir, lora: LoRAConfig, random_b: bool, layout=None, remat=False, scan_layers=False):
  model = from_pretrained(base_dir, dtype=jnp.float32, layout=layout, remat=remat, scan_layers=scan_layers).model
  apply_lora(model, lora, rngs=nnx.Rngs(0))
  if random_b:
    rng = np.random.default_rng(0)
    nnx.update(model, nnx.map_state(
        lambda p, v: v.replace(jnp.asarray(0.1 * rng.standard_normal(v.shape), v.dtype)) if p[-1] == "b" else v,
        nnx.state(model, LoRAParam)))
  return model


def samples(records, batch):
  """(prefix ids, target ids, target weights) of every step `batch` supervises, in slot order."""
  out = []
  for m in range(batch["sup_mask"].shape[0]):
    for s in np.flatnonzero(batch["sup_mask"][m]):
      row, pos = batch["sup_row"][m, s], batch["sup_pos"][m, s]
      out.append((batch["tokens"][m, row, :pos + 1], batch["target_ids"][m, s], batch["target_weights"][m, s]))
  return out


@pytest.fixture(scope="module")
def tuned(base_dir, records):
  """A model with random adapters (dropout 0), its split, a packed update and its jitted loss."""
  lora = LoRAConfig(targets=("q_proj", "v_proj", "o_proj", "up_proj"), rank=4, alpha=8.0, dropout=0.0)
  model = lora_model(base_dir, lora, random_b=True)
  graphdef, params, frozen = split_trainable(model, lora)
  config = DistillConfig(total_updates=10, valid_vocab=VALID)
  loss_and_grads = jax.jit(make_loss_and_grads(graphdef, config))
  return dict(lora=lora, model=model, graphdef=graphdef, params=params, frozen=frozen, config=config,
              loss_and_grads=loss_and_grads)


def packed_batch(records, micro_batches, update=1):
  packed = PackedUpdates(records, PackingConfig(steps_per_update=STEPS, micro_batches=micro_batches,
                                                row_multiple=4, length_multiple=8), valid_vocab=VALID)
  return packed.batch(update)


def test_loss_equals_torch_kl_div_of_each_prefix_at_its_true_last_position(base_dir, records, tuned):
  peft = pytest.importorskip("peft")
  import torch.nn.functional as F
  batch = packed_batch(records, 1)
  loss, _, n = tuned["loss_and_grads"](tuned["params"], tuned["frozen"], shard_batch(batch, None), jax.random.key(0))
  assert int(n) == STEPS
  lora = tuned["lora"]
  ref_model = peft.get_peft_model(load_hf(base_dir), peft.LoraConfig(
      r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=list(lora.targets)))
  state = {k.replace(".weight", ".default.weight"): torch.from_numpy(v)
           for k, v in to_peft_tensors(nnx.state(tuned["model"], LoRAParam)).items()}
  assert not ref_model.load_state_dict(state, strict=False).unexpected_keys
  ref_model.eval()
  kls = []
  with torch.no_grad():
    for prefix, ids, w in samples(records, batch):  # the original: one sequence per kept step
      logits = ref_model(input_ids=torch.as_tensor(prefix[None], dtype=torch.long)).logits[:, -1, :VALID]
      target = torch.zeros(1, VALID).index_add_(1, torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(w)[None])
      kls.append(F.kl_div(F.log_softmax(logits.float(), -1), target, reduction="batchmean").item())
  assert abs(float(loss) - np.mean(kls)) <= 1e-6 * max(1.0, abs(np.mean(kls))), (float(loss), np.mean(kls))


def per_sample_loss(graphdef, valid_vocab, params, frozen, tokens, lengths, ids, weights):
  """Mean KL with each step as its own right-padded prefix (a row of `tokens [N, T]`), logits at its
  true last position."""
  width = tokens.shape[1]
  mask = jnp.arange(width)[None] < lengths[:, None]
  model = nnx.merge(graphdef, params, frozen)
  hidden, _ = model(tokens, jnp.broadcast_to(jnp.arange(width), tokens.shape), mask)
  last = hidden[jnp.arange(tokens.shape[0]), lengths - 1]
  logp = jax.nn.log_softmax(model.logits(last)[:, :valid_vocab], axis=-1)
  picked = jnp.take_along_axis(logp, ids, axis=-1)
  terms = jnp.where(weights > 0, weights * (jnp.log(jnp.where(weights > 0, weights, 1.0)) - picked), 0.0)
  return jnp.mean(jnp.sum(terms, axis=-1))


def test_packed_loss_and_gradients_equal_per_sample_ones_for_any_micro_batch_split(records, tuned):
  batch = packed_batch(records, 1)
  prefixes, ids, weights = zip(*samples(records, batch))
  width = max(len(p) for p in prefixes)
  tokens = np.stack([np.pad(p, (0, width - len(p))) for p in prefixes])
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(per_sample_loss, argnums=2), static_argnums=(0, 1))(
      tuned["graphdef"], VALID, tuned["params"], tuned["frozen"], jnp.asarray(tokens),
      jnp.asarray([len(p) for p in prefixes]), jnp.asarray(np.stack(ids)), jnp.asarray(np.stack(weights)))
  ref = jax.tree.leaves(ref_grads)
  assert all(float(jnp.max(jnp.abs(g))) > 1e-4 for g in ref)  # every adapter factor gets a gradient
  for micro_batches in (1, 2):
    loss, grads, _ = tuned["loss_and_grads"](tuned["params"], tuned["frozen"],
                                             shard_batch(packed_batch(records, micro_batches), None),
                                             jax.random.key(0))
    assert abs(float(loss) - float(ref_loss)) <= 1e-6 * float(ref_loss)
    for g, r in zip(jax.tree.leaves(grads), ref):
      assert float(jnp.max(jnp.abs(g - r))) <= 1e-5 * float(jnp.max(jnp.abs(r))), micro_batches


@pytest.fixture(scope="module")
def training(base_dir, records):
  """A fresh LoRA (B = 0, dropout 0.1), its jitted distill_step and a packed update."""
  lora = LoRAConfig(targets=("q_proj", "v_proj"), rank=4, alpha=8.0, dropout=0.1)
  model = lora_model(base_dir, lora, random_b=False)
  graphdef, params, frozen = split_trainable(model, lora)
  config = DistillConfig(total_updates=8, learning_rate=1e-2, valid_vocab=VALID)
  return dict(graphdef=graphdef, params=params, frozen=frozen, config=config,
              step=make_distill_step(graphdef, config), batch=shard_batch(packed_batch(records, 1), None))


def test_an_update_moves_only_adapter_leaves_and_leaves_the_base_bitwise_identical(base_dir, training):
  state = init_train_state(training["params"], training["config"], seed=0)
  new, metrics = training["step"](state, training["frozen"], training["batch"])
  model = nnx.merge(training["graphdef"], new.params, training["frozen"])
  base = from_pretrained(base_dir, dtype=jnp.float32).model
  after = dict(nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoRAParam)))))
  before = dict(nnx.to_flat_state(nnx.state(base, nnx.Param)))
  assert after.keys() == before.keys()
  for path, b in before.items():
    assert np.array_equal(np.asarray(after[path][...]), np.asarray(b[...])), path
  for path, v in nnx.to_flat_state(new.params):
    if path[-1] == "b":  # B starts at 0; A gets no gradient until B is non-zero
      assert float(jnp.max(jnp.abs(v[...]))) > 1e-3, path
  assert int(new.step) == 1 and float(metrics["supervised_steps"]) == STEPS
  assert float(metrics["tokens"]) == float(np.sum(np.asarray(training["batch"]["mask"])))


def test_loss_decreases_on_a_fixed_batch_and_dropout_is_seeded(training):
  state = init_train_state(training["params"], training["config"], seed=0)
  losses, lrs = [], []
  for _ in range(8):
    state, metrics = training["step"](state, training["frozen"], training["batch"])
    losses.append(float(metrics["loss"]))
    lrs.append(float(metrics["lr"]))
  assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
  assert np.allclose(lrs, 1e-2 * (1 - np.arange(8) / 8), rtol=1e-6)

  def second_loss(seed):  # B = 0 makes the first update blind to the dropout mask; the second is not
    state = init_train_state(training["params"], training["config"], seed=seed)
    for _ in range(2):
      state, metrics = training["step"](state, training["frozen"], training["batch"])
    return float(metrics["loss"])

  assert second_loss(0) == losses[1] and second_loss(1) != losses[1]


def test_optimizer_matches_torch_adamw_with_grad_clipping_and_linear_decay():
  from transformers import get_linear_schedule_with_warmup
  total = 6
  config = DistillConfig(total_updates=total)
  schedule = lr_schedule(config)
  assert [float(schedule(s)) for s in (0, 3, 5, 6)] == pytest.approx([5e-5, 2.5e-5, 5e-5 / 6, 0.0], rel=1e-6)
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal(10).astype(np.float32)
  # gradient norms well above and below the clip threshold of 1.0
  grads = [(scale * rng.standard_normal(10)).astype(np.float32) for scale in (5.0, 0.01, 3.0, 0.2, 8.0, 0.05)]

  def torch_run(clip: bool):
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.AdamW([p], lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=total)
    for g in grads:
      p.grad = torch.tensor(g)
      if clip:
        torch.nn.utils.clip_grad_norm_(p, 1.0)
      opt.step()
      sched.step()
    return p.detach().numpy()

  opt = make_optimizer(config)
  params = jnp.asarray(p0)
  state = opt.init(params)
  for g in grads:
    updates, state = opt.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  clipped, unclipped = torch_run(True), torch_run(False)
  assert np.max(np.abs(np.asarray(params) - clipped)) < 1e-7
  assert np.max(np.abs(clipped - unclipped)) > 1e-6  # clipping changes the trajectory measurably


@pytest.mark.parametrize("scan_layers", [False, True])
def test_eight_sharded_devices_with_remat_equal_one_device(base_dir, records, training, scan_layers):
  """Against the unrolled single-device step: with `scan_layers` this also checks that the scanned
  layers give the same update, dropout masks included (the second update depends on them)."""
  assert jax.device_count() == 8
  lora = LoRAConfig(targets=("q_proj", "v_proj"), rank=4, alpha=8.0, dropout=0.1)
  layout = Layout.create(make_mesh((2, 2, 2)), "train")
  model = lora_model(base_dir, lora, random_b=False, layout=layout, remat=True, scan_layers=scan_layers)
  graphdef, params, frozen = split_trainable(model, lora)
  frozen = shard_state(frozen, layout)
  assert len(frozen["embed"][...].sharding.device_set) == 8
  host = packed_batch(records, 1)  # 4 rows: one per data-parallel shard
  step = make_distill_step(graphdef, training["config"], layout)
  state = init_train_state(params, training["config"], seed=0, layout=layout)
  one = init_train_state(training["params"], training["config"], seed=0)
  for _ in range(2):
    state, metrics = step(state, frozen, shard_batch(host, layout))
    one, ref = training["step"](one, training["frozen"], shard_batch(host, None))
    assert abs(float(metrics["loss"]) - float(ref["loss"])) <= 1e-5 * float(ref["loss"])
  assert step._cache_size() == 1  # the state comes back with the shardings it went in with: one compile
  assert shard_batch(host, layout)["tokens"].sharding.spec[1] == ("data", "fsdp")
  for (path, a), (_, b) in zip(nnx.to_flat_state(state.params), nnx.to_flat_state(one.params)):
    assert a[...].sharding.is_fully_replicated
    assert float(jnp.max(jnp.abs(a[...] - b[...]))) <= 1e-5 * max(1e-3, float(jnp.max(jnp.abs(b[...])))), path
