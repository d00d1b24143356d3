"""Options of ``evaluate`` (besides the model's, :class:`~dpo_retrieval.retrieval.args.EncodeArgs`),
each declared once; checks name the field (``top_k: must be > 0, got -1``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpo_retrieval.errors import positive, require


@dataclass
class EvalArgs:
    """``evaluate``: score a model on a BEIR split."""

    dataset: str = field(metadata={
        "help": "BEIR dataset name (resolved to $DPO_RETRIEVAL_DATA/<name>, default ~/.cache/dpo_retrieval/datasets; "
                "downloaded when absent) or a path with a '/' (./scifact) used as is"})
    output: str = field(metadata={"help": "results JSON (metrics, per-query scores, timings)"})
    split: str = field(default="test", metadata={"help": "qrels split: qrels/<split>.tsv"})
    top_k: int = field(default=1000, metadata={"help": "hits retrieved per query"})
    factory: str = field(default="Flat", metadata={"help": "FAISS factory for the index built here (Flat = exact)"})
    index: str | None = field(default=None, metadata={
        "help": "reuse this saved index directory (same corpus and model) instead of encoding the corpus"})
    save_index: str | None = field(default=None, metadata={"help": "also save the index built here to this directory"})
    embeddings_cache: str | None = field(default=None, metadata={
        "help": ".npy file for the corpus embeddings: reused when made by the same model and settings over the "
                "same corpus, else written"})
    run: str | None = field(default=None, metadata={"help": "also write the run (.trec or .jsonl)"})

    def __post_init__(self) -> None:
        require([(positive(self.top_k), f"top_k: must be > 0, got {self.top_k}"),
                 (bool(self.split), "split: empty split name")])
