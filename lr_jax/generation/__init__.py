"""Generation internals: token choice (`sampling`), the cached prefill / decode loop (`engine`),
EOS ids and stop strings (`stopping`) and prompt ids (`chat`). The public entry points are in
`lr_jax.generate`."""
