"""Next-token choice from float32 logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Shapes: B rows, V vocabulary entries. Every function is pure and jittable; the `SamplingConfig`
is static (hashable), so each distinct configuration compiles once.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is chosen.

  temperature: 0 means greedy (argmax of the raw logits, first index on ties, as torch.argmax);
    > 0 divides the logits before sampling.
  top_k: keep the k largest logits (ties with the k-th are kept too); None keeps all.
  top_p: nucleus: keep the smallest set of most likely tokens whose probability (after temperature
    and top-k) sums to >= top_p, always at least one token; 1.0 keeps all.
  """
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"SamplingConfig.temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
      raise ValueError(f"SamplingConfig.top_k must be None or an int >= 1, got {self.top_k!r}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def _nucleus_cutoff(sorted_logits: jax.Array, top_p: float) -> jax.Array:
  """Smallest logit kept by top-p, `[B, 1]`, from logits sorted descending `[B, N]`.

  Token i (in sorted order) is kept when the probability mass before it is < top_p, so the kept
  set is the smallest prefix reaching top_p; token 0 is always kept (mass before it is 0).
  """
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
  return jnp.take_along_axis(sorted_logits, jnp.maximum(num_kept - 1, 0), axis=-1)


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Temperature-scaled logits with the tokens outside top-k / top-p set to -inf.

  Args:
    logits: float `[B, V]` (any float dtype; computed in float32).
    config: a non-greedy `SamplingConfig`.
  Returns:
    float32 `[B, V]`; sampling from its softmax draws only allowed tokens.
  """
  x = logits.astype(jnp.float32) / config.temperature
  if config.top_k is not None and config.top_k < x.shape[-1]:
    kth = jax.lax.top_k(x, config.top_k)[0][:, -1:]
    x = jnp.where(x >= kth, x, -jnp.inf)
  if config.top_p < 1.0:
    if config.top_k is not None and config.top_k < x.shape[-1]:
      sorted_desc = jax.lax.top_k(x, config.top_k)[0]  # the only finite entries: no full sort needed
    else:
      sorted_desc = -jnp.sort(-x, axis=-1)
    x = jnp.where(x >= _nucleus_cutoff(sorted_desc, config.top_p), x, -jnp.inf)
  return x


def sample_tokens(logits: jax.Array, keys: jax.Array, config: SamplingConfig) -> jax.Array:
  """Chooses one token per row.

  Args:
    logits: float `[B, V]`, unprocessed (padding vocab rows already -inf).
    keys: `[B]` typed PRNG keys, one per row (unused when greedy), so a row's draw does not
      depend on which other rows share its batch.
    config: the `SamplingConfig`.
  Returns:
    int32 `[B]` token ids.
  """
  if config.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, config)
  return jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, filtered).astype(jnp.int32)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """float32 `[B]` log-probability of `tokens [B]` under softmax(`logits [B, V]`) (no temperature)."""
  x = logits.astype(jnp.float32)
  chosen = jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]
  return chosen - jax.nn.logsumexp(x, axis=-1)
