"""Generation internals: token choice (`sampling`), the cached prefill / decode loop (`engine`),
EOS ids and stop strings (`stopping`) and prompt ids (`chat`). The public entry points, `generate`
and `generate_batched`, are in `api` (and at the top level: `lr_jax.generate`)."""
