"""Evaluation: benchmark readers, answer extraction, math equivalence, pooled grading, run comparison.

Modules: benchmarks (readers, gold answers), fewshot (MMLU-STEM exemplars), extract (answer from a
completion), equivalence (is the answer the gold?), pool (process pool with hard per-task timeouts),
grade (grade / grade_many and the `python -m lr_jax.eval.grade` command), harness (evaluate a model
through a `complete` callable, compare two runs), significance (paired tests), files (JSONL I/O).
"""
