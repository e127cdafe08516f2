"""Reproducible multimodal fine-tuning: the library the DVC stages, Prefect tasks, Ray trials and tests share."""
