"""Silero VAD segmenter: cuts streams into utterances for the batch worker (CPU only)."""

from .app import Segmenter, SegmenterConfig, create_segmenter_app
from .backend import VADSettings

__all__ = ["Segmenter", "SegmenterConfig", "VADSettings", "create_segmenter_app"]
