"""Sharded corpus encoding: each process encodes one contiguous slice of the corpus, one merge builds the index.

``dpo-retrieval index --shard i/n`` (or ``torchrun --nproc_per_node n -m dpo_retrieval index ...``,
where the shard is taken from ``RANK``/``WORLD_SIZE``) encodes documents ``[i*N//n, (i+1)*N//n)``
of the corpus's N into ``<output>.shards/``:

- ``shard-0000i-of-0000n.npy``: its float32 embeddings (written to a temporary name, then renamed),
- ``shard-0000i-of-0000n.json``: its doc ids, titles, row range, the encoding settings and a
  fingerprint of the corpus file and the model; written last, so it says the shard is complete.

Then :func:`merge_shards` concatenates the shards in order into ONE FAISS index directory at
``<output>`` (the same directory a single-process ``index`` writes, so ``search`` and
``evaluate --index`` load it), checks that every shard saw the same corpus and model, and removes
``<output>.shards/``. Under torchrun every rank waits at a ``torch.distributed`` barrier (gloo)
and rank 0 merges; with ``--shard i/n`` the process that completes the last shard merges
(an ``O_EXCL`` lock file picks one if two finish together). Shards of several nodes meet in
``<output>.shards/``, so that directory must be on a filesystem all of them see.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from itertools import islice
from pathlib import Path

import numpy as np

from dpo_retrieval._io import atomic_directory, atomic_path, write_json
from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)

LOCK_FILE = "merge.lock"
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
#: settings that may differ between shards (timings, where they ran)
_PER_SHARD = ("encode_seconds",)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; anything else is a :class:`UserInputError`."""
    m = _SHARD_RE.match(str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserInputError(f"shard: expected i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def resolve_shard(shard: str | None) -> tuple[int, int, bool] | None:
    """``(i, n, under_torchrun)`` for a sharded build, else ``None``.

    An explicit ``shard`` wins; otherwise ``RANK``/``WORLD_SIZE`` (set by torchrun and
    accelerate) give the shard when ``WORLD_SIZE > 1``. ``n == 1`` is an ordinary build.
    """
    if shard is not None:
        i, n = parse_shard(shard)
        return (i, n, False) if n > 1 else None
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    if world > 1 and 0 <= rank < world:
        return rank, world, True
    return None


def shard_dir(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.with_name(out.name + ".shards")


def _stem(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}"


def _rows(i: int, n: int, count: int) -> tuple[int, int]:
    return i * count // n, (i + 1) * count // n


def corpus_fingerprint(path: Path, count: int) -> dict:
    st = path.stat()
    return {"corpus": str(path.resolve()), "count": count, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def encode_shard(model, corpus: Path, output: str | os.PathLike, i: int, n: int, *, count: int, factory: str,
                 batch_size: int, precision: str, chunk_size: int, model_name: str | None,
                 show_progress_bar: bool | None = None) -> Path:
    """Encode rows ``[i*count//n, (i+1)*count//n)`` of ``corpus`` into shard ``i`` of ``n``; returns its json."""
    from dpo_retrieval.data.beir import iter_corpus
    from dpo_retrieval.data.fields import join_title_text
    from dpo_retrieval.retrieval.build import encode_corpus
    from dpo_retrieval.retrieval.index import check_factory, model_settings

    meta = model_settings(model, model_name=model_name, precision=precision)
    factory = check_factory(factory, meta["dimension"], meta["metric"])
    start, stop = _rows(i, n, count)
    d = shard_dir(output)
    d.mkdir(parents=True, exist_ok=True)
    stem = _stem(i, n)
    (d / f"{stem}.json").unlink(missing_ok=True)  # a rerun of this shard: not complete until rewritten
    doc_ids: list[str] = []
    titles: list[str] = []

    def texts():
        for doc_id, title, text in islice(iter_corpus(corpus), start, stop):
            doc_ids.append(doc_id)
            titles.append(title)
            yield join_title_text(title, text)

    logger.info("shard %d/%d: encoding documents %d..%d of %d", i, n, start, stop - 1, count)
    t0 = time.perf_counter()
    with atomic_path(d / f"{stem}.npy", suffix=".npy") as tmp:
        emb = encode_corpus(model, texts(), count=stop - start, normalize=meta["normalize_embeddings"],
                            batch_size=batch_size, precision=precision, chunk_size=chunk_size, out=tmp,
                            show_progress_bar=show_progress_bar)
        del emb
    meta["encode_seconds"] = round(time.perf_counter() - t0, 3)
    record = {"shard": i, "num_shards": n, "start": start, "stop": stop, "factory": factory,
              "fingerprint": corpus_fingerprint(corpus, count), "meta": meta, "doc_ids": doc_ids,
              "titles": titles}
    return write_json(record, d / f"{stem}.json", indent=None)


def complete_shards(output: str | os.PathLike) -> tuple[list[dict], int | None]:
    """The shard records found for ``output`` (sorted) and the shard count they announce."""
    d = shard_dir(output)
    records = []
    for p in sorted(d.glob("shard-*-of-*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise UserInputError.at(p, None, f"unreadable shard record: {err}") from None
        records.append(rec)
    counts = {r["num_shards"] for r in records}
    if len(counts) > 1:
        raise UserInputError.at(d, None, f"holds shards of different splits ({sorted(counts)} shards); "
                                         "remove it and encode again")
    return sorted(records, key=lambda r: r["shard"]), (counts.pop() if counts else None)


def _comparable(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in _PER_SHARD}


def merge_shards(output: str | os.PathLike, *, keep_embeddings: bool = False, overwrite: bool = True,
                 cleanup: bool = True):
    """Build ONE index directory at ``output`` from the complete shards in ``<output>.shards/``.

    Rows keep the corpus order (shard 0's documents first). Refuses missing shards, shards of
    another corpus file or model, and overlapping or gapped row ranges. Returns the
    :class:`~dpo_retrieval.retrieval.index.FaissIndex`; removes the shard directory afterwards
    unless ``cleanup`` is false.
    """
    from dpo_retrieval.retrieval.index import EMBEDDINGS_FILE, META_FILE, build_from_embeddings

    d = shard_dir(output)
    records, n = complete_shards(output)
    if n is None:
        raise UserInputError.at(d, None, "no complete shard to merge")
    missing = sorted(set(range(n)) - {r["shard"] for r in records})
    if missing:
        raise UserInputError.at(d, None, f"{len(missing)} of {n} shards are missing or incomplete "
                                         f"(first: {missing[0]}/{n}); encode them before merging")
    first = records[0]
    for r in records[1:]:
        if r["fingerprint"] != first["fingerprint"]:
            raise UserInputError.at(d, None, f"shard {r['shard']}/{n} was encoded from another corpus file "
                                             f"({r['fingerprint']['corpus']}) than shard 0; encode it again")
        if _comparable(r["meta"]) != _comparable(first["meta"]) or r["factory"] != first["factory"]:
            raise UserInputError.at(d, None, f"shard {r['shard']}/{n} was encoded with other model settings "
                                             "than shard 0; encode every shard with the same model and options")
    count = first["fingerprint"]["count"]
    expected = 0
    for r in records:
        if r["start"] != expected or len(r["doc_ids"]) != r["stop"] - r["start"]:
            raise UserInputError.at(d, None, f"shard {r['shard']}/{n} covers rows {r['start']}..{r['stop']}, "
                                             f"expected to start at {expected}")
        expected = r["stop"]
    if expected != count:
        raise UserInputError.at(d, None, f"the shards cover {expected} of {count} documents")
    doc_ids = [x for r in records for x in r["doc_ids"]]
    titles = [x for r in records for x in r["titles"]]
    meta = dict(first["meta"], corpus=first["fingerprint"]["corpus"], shards=n,
                encode_seconds=max(r["meta"].get("encode_seconds", 0.0) for r in records))
    with atomic_directory(Path(output), marker=META_FILE, what="index directory", overwrite=overwrite) as tmp:
        emb = None
        for r in records:
            part = np.load(d / f"{_stem(r['shard'], n)}.npy", mmap_mode="r")
            if part.dtype != np.float32 or part.ndim != 2 or part.shape[0] != r["stop"] - r["start"]:
                raise UserInputError.at(d / f"{_stem(r['shard'], n)}.npy", None, f"expected {r['stop'] - r['start']} "
                                        f"float32 rows, found {part.shape} {part.dtype}")
            if emb is None:
                emb = np.lib.format.open_memmap(str(tmp / EMBEDDINGS_FILE), mode="w+", dtype=np.float32,
                                                shape=(count, part.shape[1]))
            emb[r["start"]:r["stop"]] = part
            del part
        emb.flush()
        index = build_from_embeddings(emb, doc_ids, meta, factory=first["factory"], titles=titles)
        del emb
        if not keep_embeddings:
            (tmp / EMBEDDINGS_FILE).unlink()
        index._write_into(tmp)
    if cleanup:
        shutil.rmtree(d, ignore_errors=True)
    logger.info("merged %d shards (%d documents) into %s", n, count, output)
    return index


def _try_lock(d: Path) -> bool:
    try:
        fd = os.open(d / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True


def index_sharded(model, corpus: Path, output: str | os.PathLike, i: int, n: int, distributed: bool, *,
                  count: int, keep_embeddings: bool = False, overwrite: bool = True, **encode_kwargs):
    """Encode shard ``i`` of ``n`` and, when this process is the one to, merge; returns the index or ``None``."""
    from dpo_retrieval.retrieval.index import META_FILE, FaissIndex

    out = Path(output)
    if out.is_dir() and any(out.iterdir()) and not ((out / META_FILE).exists() and overwrite):
        raise UserInputError.at(out, None, "exists; set overwrite to replace it" if (out / META_FILE).exists()
                                else "exists and is not an index directory; refusing to overwrite it")
    if count < n:
        raise UserInputError(f"shard: {n} shards for {count} documents; use at most {count}")
    if distributed:
        return _index_distributed(model, corpus, out, i, n, count=count, keep_embeddings=keep_embeddings,
                                  overwrite=overwrite, **encode_kwargs)
    encode_shard(model, corpus, out, i, n, count=count, **encode_kwargs)
    records, _ = complete_shards(out)
    if {r["shard"] for r in records} >= set(range(n)) and _try_lock(shard_dir(out)):
        try:
            return merge_shards(out, keep_embeddings=keep_embeddings, overwrite=overwrite)
        except BaseException:
            (shard_dir(out) / LOCK_FILE).unlink(missing_ok=True)
            raise
    logger.info("shard %d/%d written to %s; the process that completes the last shard builds the index",
                i, n, shard_dir(out))
    return FaissIndex.load(out) if (out / META_FILE).exists() and not shard_dir(out).exists() else None


def _index_distributed(model, corpus, out: Path, i: int, n: int, *, count: int, keep_embeddings: bool,
                       overwrite: bool, **encode_kwargs):
    """torchrun: every rank encodes its shard, waits at a barrier; rank 0 merges; all wait for the merge."""
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        created = True
    try:
        if dist.get_world_size() != n or dist.get_rank() != i:
            raise UserInputError(f"shard: RANK/WORLD_SIZE say {i}/{n}, torch.distributed says "
                                 f"{dist.get_rank()}/{dist.get_world_size()}")
        local = os.environ.get("LOCAL_RANK")
        if local is not None and getattr(getattr(model, "device", None), "type", None) == "cuda":
            model.to(f"cuda:{int(local)}")  # one GPU per rank on a node, not all on cuda:0
        error = None
        try:
            encode_shard(model, corpus, out, i, n, count=count, **encode_kwargs)
        except Exception as err:  # every rank must still reach the barrier
            error = err
        dist.barrier()
        index = None
        if i == 0 and error is None:
            try:
                index = merge_shards(out, keep_embeddings=keep_embeddings, overwrite=overwrite)
            except Exception as err:
                error = err
        dist.barrier()
        if error is not None:
            raise error
        from dpo_retrieval.retrieval.index import META_FILE, FaissIndex

        if index is None:
            if not (out / META_FILE).exists():
                raise UserInputError.at(out, None, "rank 0 did not build the index (see its log)")
            index = FaissIndex.load(out)
        return index
    finally:
        if created:
            dist.destroy_process_group()


_OWN_GROUP = False  # whether encode_across_ranks started the process group (then it may use it again)


def encode_across_ranks(model, texts, *, count: int, **encode_kwargs) -> np.ndarray:
    """All ``count`` document embeddings, in order; under torchrun (``WORLD_SIZE > 1``) each rank
    encodes its contiguous slice and the slices are gathered (``all_gather``) so every rank holds all.

    What ``evaluate`` and ``mine`` encode through (:func:`~dpo_retrieval.retrieval.search.search_dataset`);
    a single process simply calls :func:`~dpo_retrieval.retrieval.build.encode_corpus`.
    """
    from dpo_retrieval.retrieval.build import encode_corpus

    global _OWN_GROUP
    sharded = resolve_shard(None)
    if sharded is None or count < sharded[1]:
        return encode_corpus(model, texts, count=count, **encode_kwargs)
    import atexit

    import torch
    import torch.distributed as dist

    if dist.is_initialized() and not _OWN_GROUP:
        # a process group someone else runs (e.g. training, where maybe only rank 0 evaluates): a
        # collective here could wait forever, so this rank encodes everything itself
        return encode_corpus(model, texts, count=count, **encode_kwargs)
    i, n, _ = sharded
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        _OWN_GROUP = True
        atexit.register(dist.destroy_process_group)
    local = os.environ.get("LOCAL_RANK")
    if local is not None and getattr(getattr(model, "device", None), "type", None) == "cuda":
        model.to(f"cuda:{int(local)}")
    start, stop = _rows(i, n, count)
    logger.info("rank %d/%d: encoding documents %d..%d of %d", i, n, start, stop - 1, count)
    part = encode_corpus(model, islice(texts, start, stop), count=stop - start, **encode_kwargs)
    longest = -(-count // n)
    buf = torch.zeros((longest, part.shape[1]), dtype=torch.float32)
    buf[:len(part)] = torch.from_numpy(np.ascontiguousarray(part))
    gathered = [torch.empty_like(buf) for _ in range(n)]
    dist.all_gather(gathered, buf)
    return np.concatenate([g[:_rows(j, n, count)[1] - _rows(j, n, count)[0]].cpu().numpy()
                           for j, g in enumerate(gathered)])
