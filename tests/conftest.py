"""Shared fixtures: a tiny BERT built from a BertConfig and a vocab written here, and the BEIR folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `--backend auto` (the CLI default) stays on torch in tests unless a test asks otherwise: no probe runs,
# and nothing is written under ~/.cache. tests/test_backends.py covers auto's decisions.
os.environ.setdefault("DPO_RETRIEVAL_BACKEND_PROBE", "torch")

WORDS = (
    "the a of and to in is was for on with by as at from that this it be are which cell cells "
    "protein gene genes patients cancer risk increase increased decrease reduced effect effects "
    "study studies human mice blood brain heart disease treatment drug dose high low level levels "
    "white matter water fiber infants birth weight vitamin diabetes insulin virus infection immune "
    "response tumor growth signal pathway expression rna dna mutation sleep age children women men "
    "what how does cause causes can not no yes hi hello world query passage document "
    "0 1 2 3 4 5 6 7 8 9 . , - ( ) ' : ;"
).split()


def _write_tiny_model(root: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    import torch

    root.mkdir(parents=True, exist_ok=True)
    hf_dir = root / "hf"
    hf_dir.mkdir(exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(hf_dir)
    # transformers 5 ignores vocab_file= here (every word would be [UNK]); pass the vocab itself.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    out = root / "st"
    model.save(str(out))
    unknown = model.tokenizer("the cell protein")["input_ids"].count(vocab.index("[UNK]"))
    assert unknown == 0, "the tiny test tokenizer maps known words to [UNK]"
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A 2-layer, 32-d BERT sentence-transformer saved on disk (session-wide, built once)."""
    return str(_write_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture()
def tiny_model(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_path, device="cpu")


def beir_root() -> Path | None:
    root = os.environ.get("DPO_RETRIEVAL_DATA")
    candidates = [Path(root)] if root else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beir")
    for c in candidates:
        if (c / "scifact" / "corpus.jsonl").exists():
            return c
    return None


@pytest.fixture(scope="session")
def beir_data() -> Path:
    """The real BEIR folder (../shared/data/beir or $DPO_RETRIEVAL_DATA); skips when absent."""
    root = beir_root()
    if root is None:
        pytest.skip("real BEIR data not found (set DPO_RETRIEVAL_DATA or put it at ../shared/data/beir)")
    return root


@pytest.fixture()
def load(tmp_path):
    """``load_triplets`` with an HF datasets cache of the test's own (shared by the data tests)."""
    from dpo_retrieval.data.triplets import load_triplets

    cache = tmp_path / "hf-cache"

    def _load(path, **kw):
        return load_triplets(path, cache_dir=cache, **kw)

    return _load


@pytest.fixture()
def captured(monkeypatch):
    """``dpo_retrieval.training.train`` replaced by a recorder: what the command line hands the library."""
    import dpo_retrieval.training

    seen = {}

    def fake_train(cfg, args, dpo=None):
        seen.update(cfg=cfg, args=args, dpo=dpo)
        return Path(args.output_dir)

    monkeypatch.setattr(dpo_retrieval.training, "train", fake_train)
    return seen
