"""Resumable stages: each records a hash of its inputs and settings in ``<name>.stage.json`` beside its
output, and a re-run skips a stage whose hash still matches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dpo_retrieval._io import write_json


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset_stamp(path: Path, memo_file: Path | None = None) -> dict:
    """A BEIR folder's files by content (sha256; :func:`~dpo_retrieval.retrieval.cache.files_digests`), not by
    mtime: a dataset copied or re-synced unchanged keeps every stage built on it."""
    from dpo_retrieval.retrieval.cache import files_digests

    files = [f for f in [path / "corpus.jsonl", path / "queries.jsonl", *sorted((path / "qrels").glob("*.tsv"))]
             if f.exists()]
    return {str(f.relative_to(path)): d for f, d in zip(files, files_digests(files, memo_file))}


class Stage:
    """``<name>.stage.json`` beside a stage's output: the hash of its inputs and whether it finished."""

    def __init__(self, marker: Path, key: dict) -> None:
        self.marker = marker
        self.key = key
        self.hash = fingerprint(key)

    def _read(self) -> dict:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return {}

    def done(self) -> bool:
        rec = self._read()
        return rec.get("hash") == self.hash and rec.get("status") == "done"

    def started_same(self) -> bool:
        return self._read().get("hash") == self.hash

    def _write(self, status: str, **info) -> None:
        write_json({"hash": self.hash, "status": status, "key": self.key, **info}, self.marker, default=str)

    def start(self) -> None:
        self._write("running")

    def finish(self, **info) -> None:
        self._write("done", **info)

    def info(self) -> dict:
        return self._read()
