"""Options of encoding and of the retrieval commands, each declared once (a dataclass field with its help):

* :class:`DeviceArgs` (device, precision), :class:`RemoteCodeArgs` and :class:`BaseModelArgs` (those and the
  model), which training shares; :class:`ModelArgs`: the same plus the encoding backend;
* :class:`ScoringArgs`: how ``compare`` and ``sweep`` encode when they mine and score;
* :class:`EncodeArgs`: the same plus batch size and max length (``index``, ``search``, ``evaluate``, ``mine``);
* :class:`IndexArgs`: what ``index`` reads and writes; :class:`SearchArgs`: what ``search`` does.

Checks run when an object is made and raise :class:`~dpo_retrieval.errors.UserInputError` naming the
field (``top_k: must be > 0, got 0``); ``dpo-retrieval`` is generated from these classes with
``transformers.HfArgumentParser`` and shows the flag instead. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dpo_retrieval.errors import positive, require

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnx")


@dataclass(kw_only=True)
class DeviceArgs:
    """Where models run and at what precision (every command that trains or encodes; ``sweep`` too)."""

    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or mps; auto picks cuda > mps > cpu"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "auto = bf16 on GPUs with bf16 and on CPUs where a bf16 matmul measures faster than fp32, fp16 on "
                "older GPUs, else fp32; training sets the training arguments' bf16/fp16 (mixed precision), "
                "encoding runs under autocast and its embeddings are float32 either way"})

    def __post_init__(self) -> None:
        require([(self.precision in PRECISIONS,
                  f"precision: unknown value {self.precision!r}; choose auto, fp32, bf16 or fp16")])


@dataclass(kw_only=True)
class RemoteCodeArgs:
    """Whether a model's own code may run (every command that loads a model; ``merge`` too)."""

    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow a model's own Python code to run when loading it"})


@dataclass(kw_only=True)
class _ModelName:
    model: str | None = field(default=None, metadata={
        "help": "sentence-transformers model name or directory (default: the packaged all-MiniLM-L6-v2, loaded "
                "offline; train: the starting model; search, and evaluate with an index: the model recorded in "
                "the index, another model is refused unless it produces the same embeddings)"})


@dataclass(kw_only=True)
class BaseModelArgs(RemoteCodeArgs, DeviceArgs, _ModelName):
    """The model, where it runs and at what precision: what ``train`` and the encoding commands share
    (:class:`~dpo_retrieval.training.args.TrainArgs` builds on it; :class:`ModelArgs` adds the backend).
    Fields in this order: model, device, precision, trust_remote_code."""


@dataclass(kw_only=True)
class ModelArgs(BaseModelArgs):
    """The model and how it runs, plus the encoding backend (training always runs torch)."""

    backend: Literal["auto", "torch", "onnx"] = field(default="auto", metadata={
        "help": "encoding backend: torch (PyTorch), onnx (the transformer exported once to ONNX, graph-optimised "
                "at O2, cached under ~/.cache/dpo_retrieval/onnx, run by ONNX Runtime on CPU; needs the [onnx] "
                "extra), auto = onnx only on a CPU where a one-time probe finds it faster at equal embeddings, "
                "else torch; training always runs torch"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require([(self.backend in BACKENDS, f"backend: unknown value {self.backend!r}; choose auto, torch or onnx")])


@dataclass(kw_only=True)
class ScoringArgs:
    """How ``compare`` and ``sweep`` encode when they mine and score (training has its own max length)."""

    eval_max_seq_length: int = field(default=256, metadata={"help": "tokens per text in mining and scoring"})
    eval_batch_size: int = field(default=64, metadata={"help": "texts per forward pass in mining and scoring"})

    def __post_init__(self) -> None:
        require([
            (positive(self.eval_max_seq_length), f"eval_max_seq_length: must be > 0, got {self.eval_max_seq_length}"),
            (positive(self.eval_batch_size), f"eval_batch_size: must be > 0, got {self.eval_batch_size}"),
        ])


@dataclass(kw_only=True)
class EncodeArgs(ModelArgs):
    """The model, plus how texts are batched and truncated."""

    batch_size: int = field(default=64, metadata={"help": "texts per forward pass"})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "tokens per text; longer texts are truncated (default: 256, or the index's when one is read)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require([
            (positive(self.batch_size), f"batch_size: must be > 0, got {self.batch_size}"),
            (positive(self.max_seq_length, optional=True), f"max_seq_length: must be > 0, got {self.max_seq_length}"),
        ])

    def seq_length(self, index=None) -> int:
        """The max length to load the model with: this one, else the index's, else 256."""
        return self.max_seq_length or (index.meta.get("max_seq_length") if index is not None else None) or 256


def _one_of(args, a: str, b: str) -> tuple[bool, str]:
    given = [name for name in (a, b) if getattr(args, name) is not None]
    return len(given) == 1, f"{a}: give exactly one of {a} or {b}" + (", not both" if given else "")


@dataclass
class IndexArgs:
    """``index``: encode a corpus and save a FAISS index directory."""

    output: str = field(metadata={"help": "index directory to write"})
    corpus: str | None = field(default=None, metadata={
        "help": "corpus.jsonl: one {\"_id\", \"title\", \"text\"} object per line (or give a dataset)"})
    dataset: str | None = field(default=None, metadata={
        "help": "BEIR dataset name (resolved under $DPO_RETRIEVAL_DATA, downloaded if absent) or a dataset "
                "directory; its corpus.jsonl is indexed (or give a corpus)"})
    factory: str = field(default="Flat", metadata={
        "help": "FAISS index factory string: Flat (exact), HNSW32, IVF{n},Flat, IVF{n},PQ{m} ..."})
    chunk_size: int = field(default=8192, metadata={"help": "documents read and encoded per chunk"})
    keep_embeddings: bool = field(default=False, metadata={
        "help": "also keep the raw float32 document embeddings as embeddings.npy in the index directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing index directory at the output"})
    shard: str | None = field(default=None, metadata={
        "help": "i/n: encode only the i-th of n contiguous slices of the corpus (0-based) into OUTPUT.shards/; the "
                "process that completes the last shard merges them into one index at OUTPUT, doc ids in corpus "
                "order (default: RANK/WORLD_SIZE under torchrun with more than one process, where rank 0 merges "
                "after a barrier; else no sharding)"})

    def __post_init__(self) -> None:
        require([_one_of(self, "corpus", "dataset"),
                 (positive(self.chunk_size), f"chunk_size: must be > 0, got {self.chunk_size}")])
        if self.shard is not None:
            from dpo_retrieval.retrieval.shards import parse_shard

            parse_shard(self.shard)


@dataclass
class SearchArgs:
    """``search``: one query printed, or a queries file written as a run."""

    index: str = field(metadata={"help": "index directory written by `dpo-retrieval index`"})
    query: str | None = field(default=None, metadata={"help": "one query text (or give a queries file)"})
    queries: str | None = field(default=None, metadata={
        "help": "queries.jsonl: one {\"_id\", \"text\"} object per line (or give one query)"})
    top_k: int = field(default=10, metadata={"help": "hits per query"})
    output: str | None = field(default=None, metadata={
        "help": "write the run here: .trec (TREC run format 'qid Q0 docid rank score tag') or .jsonl; without it "
                "the hits are printed"})
    format: Literal["trec", "jsonl"] | None = field(default=None, metadata={
        "help": "run file format (default: from the output's suffix; .trec/.run/.txt = trec)"})
    nprobe: int | None = field(default=None, metadata={
        "help": "IVF indexes: inverted lists visited per query; more = better recall, slower (default: 16)"})
    ef_search: int | None = field(default=None, metadata={
        "help": "HNSW indexes: candidate list size; more = better recall, slower (default: max(128, top_k))"})

    def __post_init__(self) -> None:
        require([
            _one_of(self, "query", "queries"),
            (positive(self.top_k), f"top_k: must be > 0, got {self.top_k}"),
            (self.format in (None, "trec", "jsonl"), f"format: choose trec or jsonl, got {self.format!r}"),
            (positive(self.nprobe, optional=True), f"nprobe: must be > 0, got {self.nprobe}"),
            (positive(self.ef_search, optional=True), f"ef_search: must be > 0, got {self.ef_search}"),
        ])
