"""The embedded demo: a complete LightReasoner run on a laptop CPU with nothing to download.

  world.py      seeded arithmetic word problems with step-by-step solutions (a tiny GSM8K)
  tokenizer.py  a small byte-level BPE tokenizer with Qwen2.5's special tokens and ChatML template
  pretrain.py   pre-training of the tiny expert and amateur models on the world's problems
  build.py      the three above into one folder (world files, expert/ and amateur/ checkpoints,
                DONE.json), reusing a finished build
"""
