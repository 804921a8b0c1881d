"""Pre-trains the demo's expert and amateur from scratch with lr_jax's own model, saved as HF checkpoints.

Sequences are `chat prompt + solution + <|im_end|>`; the loss covers the assistant part only, so
the models learn to solve problems in the format the pipeline prompts them with.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from lr_jax.files import write_json_atomic
from lr_jax.models.config import ModelConfig
from lr_jax.models.hf_io import save_pretrained, to_hf_tensors
from lr_jax.models.transformer import Transformer, positions_from_mask


def tiny_qwen2_config(vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int) -> ModelConfig:
  """A Qwen2-architecture config (q/k/v bias, tied embeddings, 512 positions) of the given size."""
  if hidden % heads or heads % kv_heads:
    raise ValueError(f"tiny_qwen2_config: need hidden % heads == 0 and heads % kv_heads == 0, got "
                     f"hidden={hidden} heads={heads} kv_heads={kv_heads}")
  return ModelConfig(model_type="qwen2", vocab_size=vocab_size, hidden_size=hidden, num_layers=layers,
                     num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=mlp,
                     rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512,
                     tie_word_embeddings=True, qkv_bias=True, o_bias=False)


def pack_examples(prompts: Sequence[list[int]], completions: Sequence[list[int]], seq_len: int,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One example per row, right-padded to `seq_len` (longer ones dropped).

  Returns tokens int32 `[N, L]`, mask bool `[N, L]` (real tokens) and loss_mask bool `[N, L]`
  (True where the *next* token is part of the completion).
  """
  rows = [(p, c) for p, c in zip(prompts, completions) if len(p) + len(c) <= seq_len]
  tokens = np.full((len(rows), seq_len), pad_id, np.int32)
  mask = np.zeros((len(rows), seq_len), bool)
  loss_mask = np.zeros((len(rows), seq_len), bool)
  for i, (p, c) in enumerate(rows):
    n = len(p) + len(c)
    tokens[i, :n] = p + c
    mask[i, :n] = True
    loss_mask[i, len(p) - 1:n - 1] = True
  return tokens, mask, loss_mask


def pretrain(cfg: ModelConfig, tokens: np.ndarray, mask: np.ndarray, loss_mask: np.ndarray, *, steps: int,
             batch_size: int, learning_rate: float, seed: int, desc: str = "pretrain") -> tuple[Transformer, list[float]]:
  """Trains a fresh float32 `Transformer` with AdamW (warm-up + cosine decay) on next-token loss.

  Args:
    cfg: the architecture; weights are initialised from `seed`.
    tokens, mask, loss_mask: `[N, L]` rows from `pack_examples`.
    steps, batch_size: each step takes `batch_size` rows, walking seeded permutations of the rows
      epoch after epoch (every row once per epoch).
    learning_rate: peak of the schedule (linear warm-up over 5% of the steps, cosine to 5%).
  Returns:
    The trained model and the mean loss (nats per completion token) of every step.
  Deterministic: the same arguments give bitwise the same weights on the same machine.
  """
  if len(tokens) < batch_size:
    raise ValueError(f"pretrain: {len(tokens)} training rows, fewer than batch_size={batch_size}")
  graphdef, params = nnx.split(Transformer(cfg, dtype=jnp.float32, rngs=nnx.Rngs(seed)))
  tx = _optimizer(learning_rate, steps)
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  order = np.empty(0, np.int64)
  losses = []
  for _ in tqdm(range(steps), desc=desc, disable=jax.process_index() != 0):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(tokens))])
    idx, order = order[:batch_size], order[batch_size:]
    params, opt_state, loss = _train_step(graphdef, tx, params, opt_state, tokens[idx], mask[idx], loss_mask[idx])
    losses.append(loss)
  return nnx.merge(graphdef, params), [float(x) for x in jax.device_get(losses)]


@functools.lru_cache(maxsize=None)
def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
  """One object per (lr, steps), so `_train_step` (static in it) compiles once per schedule."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps, learning_rate * 0.05)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def _train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, params: nnx.State, opt_state,
                tokens: jax.Array, mask: jax.Array, loss_mask: jax.Array):
  """One AdamW step on a `[B, L]` batch; returns new params, optimizer state and the float32 loss."""

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens, positions_from_mask(mask), mask)
    logits = model.logits(hidden)  # [B, L, V]: the demo vocabulary is a few hundred rows
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    weight = loss_mask[:, :-1].astype(jnp.float32)
    return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def save_model(model: Transformer, out_dir: str, tokenizer_dir: str, eos_ids: Sequence[int], pad_id: int) -> None:
  """Writes an HF checkpoint (config, float32 safetensors, tokenizer, greedy generation config)."""
  cfg = model.config
  save_pretrained(to_hf_tensors(nnx.state(model)), cfg, out_dir, source_dir=tokenizer_dir, dtype_name="float32")
  gen = {"do_sample": False, "eos_token_id": list(eos_ids), "pad_token_id": pad_id}
  write_json_atomic(os.path.join(out_dir, "generation_config.json"), gen, sort_keys=False)
