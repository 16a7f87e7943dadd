"""Parakeet batch worker: offline NeMo model, dynamic batcher, OpenAI-compatible API."""
