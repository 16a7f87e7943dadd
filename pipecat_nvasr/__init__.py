"""Pipecat STT services for NVIDIA Nemotron-Speech / Parakeet / multitalker workers.

The services are imported lazily, so `import pipecat_nvasr.protocol` (used by the workers)
never pulls in Pipecat. No torch, no NeMo anywhere in this package.
"""

_LAZY = {
    "NemotronSTTService": "nemotron",
    "NemotronSTTSettings": "nemotron",
    "NEMOTRON_35_LANGUAGES": "nemotron",
    "ParakeetRealtimeSTTService": "parakeet_realtime",
    "ParakeetRealtimeSTTSettings": "parakeet_realtime",
    "MultitalkerSTTService": "multitalker",
    "MultitalkerSTTSettings": "multitalker",
    "NvasrListenSTTService": "_listen_service",
    "NvasrListenSettings": "_listen_service",
    "ParakeetSTTService": "parakeet",
    "ParakeetSTTSettings": "parakeet",
    "ListenClient": "client",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
