"""NeMo's streaming-inference config for a cache-aware RNNT model: decoding, confidence and the
attention context of each chunk size. The vectorised step reads its geometry from it with NeMo's
own expressions (and the NeMo-pipeline reference in tests/reference/ builds its pipeline from it).
"""

from __future__ import annotations

from .model_check import CHUNK_CONTEXTS  # noqa: F401  (re-exported)  # chunk ms → att_context_size [left, right]


def served_context(trained: list, wanted: list) -> list:
    """`wanted`, or the model's own context with the same look-ahead (chunk size) if it has another
    left context (320 ms: chunked_limited attention needs left % (right + 1) == 0, so no [70, 3])."""
    trained = [list(c) for c in trained]
    if list(wanted) in trained:
        return list(wanted)
    same = [c for c in trained if c[1] == wanted[1]]
    if not same:
        chunks = sorted(80 * (c[1] + 1) for c in trained)
        raise ValueError(f"the model was not trained for {80 * (wanted[1] + 1)} ms chunks; it takes {chunks} ms")
    return same[0]


def pipeline_config(
    model: str,
    chunk_ms: int,
    max_streams: int,
    device: str = "cpu",
    compute_dtype: str = "float32",
    endpoint_silence_ms: int = 720,
    boosting: bool = True,
) -> dict:
    """The NeMo inference-pipeline config for one cache-aware RNNT model."""
    from ..devices import nemo_device_args

    if chunk_ms not in CHUNK_CONTEXTS:
        raise ValueError(f"chunk_ms must be one of {sorted(CHUNK_CONTEXTS)}, not {chunk_ms}")
    device_type, device_id = nemo_device_args(device)
    return {
        "asr_decoding_type": "rnnt",
        "pipeline_type": "cache_aware",
        "asr": {
            "model_name": model,
            "device": device_type,
            "device_id": device_id,
            "compute_dtype": compute_dtype,
            "use_amp": False,
            "decoding": {
                "strategy": "greedy_batch",
                "greedy": {
                    "max_symbols": 10,
                    "preserve_frame_confidence": True,
                    "enable_per_stream_biasing": boosting,
                },
            },
        },
        "confidence": {"exclude_blank": True, "aggregation": "mean", "method_cfg": {"name": "max_prob"}},
        "streaming": {
            "sample_rate": 16000,
            "batch_size": max_streams,
            "num_slots": max_streams,
            "att_context_size": CHUNK_CONTEXTS[chunk_ms],
            "use_cache": True,
            "use_feat_cache": True,
            "word_boundary_tolerance": 4,
            "request_type": "frame",
            "chunk_size_in_secs": None,
        },
        # NeMo ends an utterance after this much trailing silence (blank run). Residue tokens
        # must stay 0: with a residue, a first token landing in the last slot of a blank-filled
        # label buffer is skipped by the check and the utterance ends after its first piece.
        "endpointing": {"stop_history_eou": endpoint_silence_ms, "residue_tokens_at_end": 0},
        "enable_itn": False,
        "enable_nmt": False,
        "asr_output_granularity": "word",
        "return_tail_result": False,
        "itn": {"batch_size": 32, "n_jobs": 1, "left_padding_size": 4},
        "nmt": None,
        "cache_dir": None,
        "lang": "en",
    }
