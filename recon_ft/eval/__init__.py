"""Evaluation: caption and generation metrics, metric feature extractors, analysis statistics."""
