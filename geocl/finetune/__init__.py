"""Segmentation finetuning at label fractions, metrics and whole-scene prediction."""
