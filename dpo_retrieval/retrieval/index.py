"""FAISS indexes over sentence-transformers embeddings: build, save/load atomically, search.

This is the only module that imports ``faiss``. An index directory holds

- ``index.faiss``: the FAISS index (always saved as a CPU index),
- ``doc_ids.json``: the document id of each row, in order (``titles.json``: their titles, if known),
- ``metadata.json``: how the corpus was encoded (model, max_seq_length, similarity/normalization,
  title/text join, dimension, count, factory string, library versions, a probe embedding), so
  that queries are encoded the same way and a mismatched model is refused; written last,
- ``embeddings.npy`` (optional): the raw float32 document embeddings for reuse.

Similarity follows the model's ``similarity_fn_name``: cosine = inner product on L2-normalized
embeddings, dot = inner product, euclidean = L2 distance (scores are negated distances, so higher
is always better).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU variant it tries at INFO
import faiss  # noqa: E402

from dpo_retrieval._io import atomic_directory
from dpo_retrieval.retrieval.encoding import DEFAULT_BATCH_SIZE, DOC_JOIN, encode_texts, resolved_precision
from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
TITLES_FILE = "titles.json"
META_FILE = "metadata.json"
EMBEDDINGS_FILE = "embeddings.npy"
DEFAULT_FACTORY = "Flat"
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 128
#: Encoded at build time and stored; a model that does not reproduce it is not the indexing model.
PROBE_TEXT = "dpo-retrieval index probe: what causes white matter changes in newborn infants?"
PROBE_MIN_COSINE = 0.99  # bf16 vs fp32 stays above 0.999; another checkpoint falls far below

_SIMILARITIES = {  # similarity_fn_name -> (normalize, faiss metric name)
    "cosine": (True, "inner_product"),
    "dot": (False, "inner_product"),
    "euclidean": (False, "l2"),
}


def _metric(name: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if name == "inner_product" else faiss.METRIC_L2


def similarity_settings(model) -> tuple[str, bool, str]:
    """(similarity name, normalize embeddings?, faiss metric) for a sentence-transformers model."""
    name = str(getattr(model, "similarity_fn_name", None) or "cosine")
    if name not in _SIMILARITIES:
        raise UserInputError(f"model: similarity {name!r} has no FAISS equivalent; use a cosine, dot or euclidean model")
    normalize, metric = _SIMILARITIES[name]
    return name, normalize, metric


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"faiss": faiss.__version__, "numpy": np.__version__}
    for dist in ("dpo-retrieval", "sentence-transformers", "transformers", "torch"):
        try:
            out[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


def check_factory(factory: str, dim: int = 64, metric: str = "inner_product") -> str:
    """Validate a FAISS factory string (``Flat``, ``HNSW32``, ``IVF100,Flat``, ``IVF100,PQ16`` ...)."""
    factory = (factory or "").strip()
    if not factory:
        raise UserInputError("factory: empty factory string")
    try:
        faiss.index_factory(dim, factory, _metric(metric))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "invalid"
        raise UserInputError(f"factory: FAISS cannot build {factory!r} ({first}); "
                             "try Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from None
    return factory


def _nlist(factory: str) -> int | None:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def _min_train_points(factory: str) -> int:
    need = _nlist(factory) or 1
    if re.search(r"PQ\d+", factory):  # 8-bit codes: 256 centroids per sub-quantizer
        bits = re.search(r"PQ\d+x(\d+)", factory)
        need = max(need, 2 ** int(bits.group(1)) if bits else 256)
    return need


def model_settings(model, *, model_name: str | None = None, precision: str = "auto") -> dict:
    """What must match between the corpus side and the query side (plus provenance)."""
    from dpo_retrieval.retrieval.onnx_export import model_backend
    from dpo_retrieval.models import has_two_towers

    similarity, normalize, metric = similarity_settings(model)
    dim = model.get_embedding_dimension()
    probe = encode_texts(model, [PROBE_TEXT], task="query", precision="fp32",
                         normalize_embeddings=True, show_progress_bar=False)[0]
    if model_name is not None and Path(model_name).exists():
        model_name = str(Path(model_name).resolve())
    return {
        "model": model_name,
        "max_seq_length": getattr(model, "max_seq_length", None),
        "similarity": similarity,
        "normalize_embeddings": normalize,
        "metric": metric,
        "dimension": int(dim) if dim is not None else int(probe.shape[0]),
        "two_towers": bool(has_two_towers(model)),
        "prompts": dict(getattr(model, "prompts", {}) or {}),
        "query_task": "query",
        "document_task": "document",
        "doc_join": DOC_JOIN,
        "precision": resolved_precision(model, precision),
        "backend": model_backend(model),
        "probe": [round(float(x), 6) for x in probe],
    }


class FaissIndex:
    """A FAISS index, the doc id of each row, and the metadata that says how to query it."""

    def __init__(self, index, doc_ids: Sequence[str], meta: dict, titles: Sequence[str] | None = None) -> None:
        if index.ntotal != len(doc_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(doc_ids)} doc ids were given")
        if titles is not None and len(titles) != len(doc_ids):
            raise ValueError(f"{len(titles)} titles for {len(doc_ids)} doc ids")
        self.index = index
        self.doc_ids = list(doc_ids)
        self.titles = list(titles) if titles is not None else None
        self.meta = meta
        self._gpu = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def factory(self) -> str:
        return self.meta.get("factory", DEFAULT_FACTORY)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"FaissIndex({self.factory!r}, count={self.count}, dim={self.dimension}, model={self.meta.get('model')!r})"

    # -- model checks --------------------------------------------------------------------------
    def check_model(self, model, *, where: str = "model") -> None:
        """Refuse a model whose dimension, similarity, max_seq_length or embeddings differ from the index's."""
        meta = self.meta
        problems = []
        dim = model.get_embedding_dimension()
        if dim is not None and int(dim) != self.dimension:
            problems.append(f"dimension {dim} != index {self.dimension}")
        sim = str(getattr(model, "similarity_fn_name", None) or "cosine")
        if meta.get("similarity") and sim != meta["similarity"]:
            problems.append(f"similarity {sim} != index {meta['similarity']}")
        msl = getattr(model, "max_seq_length", None)
        if meta.get("max_seq_length") is not None and msl is not None and int(msl) != int(meta["max_seq_length"]):
            problems.append(f"max_seq_length {msl} != index {meta['max_seq_length']}")
        if not problems and meta.get("probe"):
            probe = encode_texts(model, [PROBE_TEXT], task="query", precision="fp32",
                                 normalize_embeddings=True, show_progress_bar=False)[0]
            ref = np.asarray(meta["probe"], dtype=np.float32)
            if ref.shape == probe.shape:
                cos = float(probe @ ref / (np.linalg.norm(ref) * np.linalg.norm(probe) + 1e-12))
                if cos < PROBE_MIN_COSINE:
                    problems.append(f"its embeddings differ from the indexing model's (probe cosine {cos:.3f})")
        if problems:
            raise UserInputError(
                f"{where}: does not match the index built with {meta.get('model')!r}: " + "; ".join(problems)
                + " (search with the model that built the index, or rebuild it)")

    # -- encoding + search ---------------------------------------------------------------------
    def encode_queries(self, model, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                       precision: str = "auto", show_progress_bar: bool | None = None) -> np.ndarray:
        """Encode queries exactly as this index's settings say (task=query, same normalization)."""
        return encode_texts(model, texts, batch_size=batch_size, precision=precision, task="query",
                            normalize_embeddings=bool(self.meta.get("normalize_embeddings")),
                            show_progress_bar=show_progress_bar, desc="Encoding queries")

    def _searchable(self):
        if self._gpu is None:
            self._gpu = _maybe_to_gpu(self.index) or False
        return self._gpu or self.index

    def search(self, query_embs: np.ndarray, k: int = 10, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query: ``(scores, ids)``, both ``(n_queries, k)``; higher score = better.

        ``ids`` is an object array of doc ids; where fewer than ``k`` hits exist the id is ``None``
        and the score ``-inf``. ``nprobe`` (IVF) and ``ef_search`` (HNSW) trade speed for recall.
        """
        q = np.ascontiguousarray(np.asarray(query_embs, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dimension:
            raise ValueError(f"query embeddings have shape {q.shape}; the index expects (n, {self.dimension})")
        if k <= 0:
            raise UserInputError(f"-k: must be > 0, got {k}")
        k_eff = min(k, self.count)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), None, dtype=object)
        if k_eff == 0 or q.shape[0] == 0:
            return scores, ids
        index = self._searchable()
        _set_search_params(index, self.meta, k_eff, nprobe=nprobe, ef_search=ef_search)
        dist, pos = index.search(q, k_eff)
        if self.meta.get("metric") == "l2":
            dist = -np.sqrt(np.maximum(dist, 0.0))
        valid = pos >= 0
        scores[:, :k_eff] = np.where(valid, dist, -np.inf)
        doc_ids = np.asarray(self.doc_ids, dtype=object)
        ids[:, :k_eff] = np.where(valid, doc_ids[np.where(valid, pos, 0)], None)
        return scores, ids

    def save(self, directory: str | os.PathLike, *, embeddings: np.ndarray | None = None,
             overwrite: bool = True) -> Path:
        """Write the index directory atomically (temporary sibling directory, then rename)."""
        target = Path(directory)
        with atomic_directory(target, marker=META_FILE, what="index directory", overwrite=overwrite) as tmp:
            if embeddings is not None:
                np.save(tmp / EMBEDDINGS_FILE, np.asarray(embeddings, dtype=np.float32))
            self._write_into(tmp)
        return target

    def _write_into(self, tmp: Path) -> None:
        faiss.write_index(self.index, str(tmp / INDEX_FILE))
        (tmp / IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False))
        if self.titles is not None:
            (tmp / TITLES_FILE).write_text(json.dumps(self.titles, ensure_ascii=False))
        meta = dict(self.meta, count=self.count, dimension=self.dimension,
                    has_embeddings=(tmp / EMBEDDINGS_FILE).exists())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")  # last

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FaissIndex":
        d = Path(directory)
        if not d.exists():
            raise UserInputError.at(d, None, "no such index directory")
        if not d.is_dir():
            raise UserInputError.at(d, None, "is a file; an index is the directory `dpo-retrieval index` writes")
        for name in (META_FILE, INDEX_FILE, IDS_FILE):
            if not (d / name).is_file():
                raise UserInputError.at(d / name, None, "missing: not an index directory (or an interrupted build)")
        meta = _read_json(d / META_FILE)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise UserInputError.at(d / META_FILE, None,
                                    f"unsupported index format {meta.get('format_version') if isinstance(meta, dict) else meta!r}")
        doc_ids = _read_json(d / IDS_FILE)
        if not isinstance(doc_ids, list) or not all(isinstance(x, str) for x in doc_ids):
            raise UserInputError.at(d / IDS_FILE, None, "expected a list of document ids (strings)")
        if len(set(doc_ids)) != len(doc_ids):
            seen: set[str] = set()
            dup = next(x for x in doc_ids if x in seen or seen.add(x))
            raise UserInputError.at(d / IDS_FILE, None, f"duplicate document id {dup!r}")
        try:
            index = faiss.read_index(str(d / INDEX_FILE))
        except RuntimeError as err:
            raise UserInputError.at(d / INDEX_FILE, None, f"FAISS cannot read it: {str(err).strip().splitlines()[-1]}") from None
        if index.ntotal != len(doc_ids) or meta.get("count") != len(doc_ids) or meta.get("dimension") != index.d:
            raise UserInputError.at(d, None, f"inconsistent index: {index.ntotal} vectors, {len(doc_ids)} ids, "
                                             f"metadata says {meta.get('count')} x {meta.get('dimension')}")
        titles = None
        if (d / TITLES_FILE).is_file():
            titles = _read_json(d / TITLES_FILE)
            if not isinstance(titles, list) or len(titles) != len(doc_ids):
                raise UserInputError.at(d / TITLES_FILE, None, f"expected a list of {len(doc_ids)} titles")
        return cls(index, doc_ids, meta, titles)

    def title(self, doc_id: str) -> str:
        if self.titles is None:
            return ""
        if not hasattr(self, "_title_of"):
            self._title_of = dict(zip(self.doc_ids, self.titles))
        return self._title_of.get(doc_id, "") or ""


# ----------------------------------------------------------------------------------------------
# building
def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError.at(path, getattr(err, "lineno", None), f"invalid JSON: {err}") from None


def _maybe_to_gpu(index):
    """Move ``index`` to GPU 0 when faiss-gpu and a CUDA device are present; ``None`` otherwise."""
    try:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            return None
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, index)
        gpu._dpo_res = res  # keep the resources alive as long as the index
        return gpu
    except (RuntimeError, AttributeError) as err:  # e.g. HNSW has no GPU implementation
        logger.debug("FAISS index stays on CPU: %s", err)
        return None


def _to_cpu(index):
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


def _set_search_params(index, meta: dict, k: int, *, nprobe: int | None, ef_search: int | None) -> None:
    params = meta.get("search_params", {})
    space = faiss.GpuParameterSpace() if "Gpu" in type(index).__name__ and hasattr(faiss, "GpuParameterSpace") \
        else faiss.ParameterSpace()
    nlist = _nlist(meta.get("factory", ""))
    if nlist:
        value = nprobe or params.get("nprobe", DEFAULT_NPROBE)
        _try_set(space, index, "nprobe", min(int(value), nlist))
    if "HNSW" in meta.get("factory", ""):
        value = ef_search or params.get("efSearch", DEFAULT_EF_SEARCH)
        _try_set(space, index, "efSearch", max(int(value), k))


def _try_set(space, index, name: str, value) -> None:
    try:
        space.set_index_parameter(index, name, value)
    except RuntimeError as err:  # pragma: no cover - factory without that knob
        logger.debug("cannot set %s=%s: %s", name, value, err)


def build_from_embeddings(embeddings: np.ndarray, doc_ids: Sequence[str], meta: dict, *,
                          factory: str = DEFAULT_FACTORY, titles: Sequence[str] | None = None,
                          max_train_points: int = 256 * 1024,
                          add_chunk: int = 65536, seed: int = 0) -> FaissIndex:
    """Build a FAISS index over (already normalized, if cosine) float32 ``embeddings``.

    Factories that need training (IVF, PQ ...) train on up to ``max_train_points`` rows sampled
    with ``seed``. Works on ``np.memmap`` embeddings without loading them whole.
    """
    n, dim = embeddings.shape
    if n != len(doc_ids):
        raise ValueError(f"{n} embeddings but {len(doc_ids)} doc ids")
    if len(set(doc_ids)) != len(doc_ids):
        seen, dup = set(), None
        for d in doc_ids:
            if d in seen:
                dup = d
                break
            seen.add(d)
        raise UserInputError(f"duplicate document id {dup!r} in the corpus")
    factory = check_factory(factory, dim, meta["metric"])
    cpu_index = faiss.index_factory(dim, factory, _metric(meta["metric"]))
    gpu_index = _maybe_to_gpu(cpu_index)
    index = gpu_index or cpu_index
    t0 = time.perf_counter()
    if not index.is_trained:
        need = _min_train_points(factory)
        if n < need:
            raise UserInputError(f"factory: {factory} needs at least {need} documents to train, the corpus has {n}; "
                                 "use a smaller IVF/PQ size or Flat")
        rows = np.arange(n) if n <= max_train_points else \
            np.sort(np.random.default_rng(seed).choice(n, max_train_points, replace=False))
        logger.info("training %s on %d vectors", factory, len(rows))
        index.train(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    for start in range(0, n, add_chunk):
        index.add(np.ascontiguousarray(embeddings[start:start + add_chunk], dtype=np.float32))
    meta = dict(meta, format_version=FORMAT_VERSION, factory=factory, count=n, dimension=dim,
                versions=library_versions(),
                search_params={"nprobe": DEFAULT_NPROBE, "efSearch": DEFAULT_EF_SEARCH},
                build_seconds=round(time.perf_counter() - t0, 3))
    out = FaissIndex(_to_cpu(index), doc_ids, meta, titles)
    if gpu_index is not None:
        out._gpu = gpu_index
    return out
