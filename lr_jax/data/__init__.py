"""Data layer: problem sources, prompt templates, the sample store and its statistics."""
