"""Where a model's weights come from: a local `.nemo`, a `random:` spec, or a pinned Hugging Face file.

A hub model is fetched here, at one revision, as `<repo>/<name>.nemo` (the file NeMo's
`from_pretrained` reads) and then loaded by path, so the revision served is the one asked for
and is known: `Weights.label` (`nvidia/…@<commit>`) is what `ready` and `/health` report.
Only a failed *fetch* is a `DownloadError`; the caller may fall back on it. Anything that goes
wrong after the file is here (wrong model class, untrained chunk size, a corrupt file) is the
loader's error and stops the worker with its cause.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Optional

from .refusal import StartupRefusal


class DownloadError(StartupRefusal):
    """The weights could not be fetched (no network, no such repo/revision, hub down)."""


@dataclass(frozen=True)
class Weights:
    spec: str  # what was asked for: a hub id, a local path, random:<arch>
    path: str  # what the loaders read: a local .nemo, or the random: spec itself
    revision: Optional[str] = None  # the hub commit the file came from

    @property
    def label(self) -> str:
        return f"{self.spec}@{self.revision}" if self.revision else self.spec


def is_hub_id(spec: str) -> bool:
    """A Hugging Face repo id (`owner/name`), not a local file, a random: spec or `null`."""
    return "/" in spec and not os.path.exists(spec) and ":" not in spec and not spec.endswith(".nemo")


def fetch(spec: str, revision: Optional[str] = None) -> Weights:
    """The weights for `spec`; hub files are fetched into the HF cache at `revision` (None: main)."""
    if not is_hub_id(spec):
        if spec.endswith(".nemo") and not os.path.exists(spec):
            raise StartupRefusal(f"model file {spec} does not exist")
        return Weights(spec, spec)
    from huggingface_hub import hf_hub_download

    filename = PurePosixPath(spec).name + ".nemo"
    try:
        path = hf_hub_download(repo_id=spec, filename=filename, revision=revision)
    except Exception as exc:  # offline, unknown repo or revision, HTTP errors: all "could not fetch"
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        at = f" at revision {revision}" if revision else ""
        raise DownloadError(f"could not download {spec}{at} ({type(exc).__name__}: {first})") from exc
    # the HF cache keeps every file under snapshots/<commit>/: that folder names the revision served
    commit = PurePosixPath(path).parent.name
    return Weights(spec, path, commit if len(commit) == 40 else revision)


def fetch_or_fallback(spec: str, revision: Optional[str], fallback: Optional[str], what: str = "model") -> Weights:
    """`fetch(spec)`; if that download fails and a fallback is set, say so loudly and use it."""
    try:
        return fetch(spec, revision)
    except DownloadError as exc:
        if not fallback:
            raise
        import logging

        logging.getLogger(__name__).warning("%s; falling back to %s", exc, fallback)
        print(f"NOTE: {what} {spec} could not be downloaded; using the bundled {fallback} instead "
              "(it knows a small demo vocabulary only).", flush=True)
        return fetch(fallback)


# ---------------------------------------------------------------- deploy-time pins (modal_deploy.py)

LOCK_FILE = "revisions.json"  # next to the weights in the deploy's Volume: model id → the commit it serves


def _read_lock(lock_path: str) -> dict[str, str]:
    import json

    return json.loads(open(lock_path).read()) if os.path.exists(lock_path) else {}


def lock_revisions(pins: dict[str, Optional[str]], lock_path: str) -> dict[str, str]:
    """At image build: fetch every hub model at its pin — or, with no pin, at the commit already
    recorded in `lock_path`, or (the first build) main's current commit — and record the commits.

    So a redeploy never changes a model under its users: an unpinned model stays at the commit
    its first build saw until its pin is set on purpose (or the lock entry is deleted)."""
    import json

    lock = _read_lock(lock_path)
    for model_id, pin in pins.items():
        if not is_hub_id(model_id):
            continue
        weights = fetch(model_id, pin or lock.get(model_id))
        lock[model_id] = weights.revision
    with open(lock_path, "w") as out:
        out.write(json.dumps(lock, indent=1, sort_keys=True) + "\n")
    return lock


def locked_revision(model_id: str, pin: Optional[str], lock_path: str) -> Optional[str]:
    """In a container: the pin if one is set, else the commit the image build recorded."""
    if pin or not is_hub_id(model_id):
        return pin or None
    return _read_lock(lock_path).get(model_id)
