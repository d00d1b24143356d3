"""dpo-retrieval: Direct Preference Optimization for dual-encoder retrievers.

The DPO loss lives in :mod:`dpo_retrieval.losses`; the rest is glue around sentence-transformers,
HF datasets, FAISS and BEIR. ``DPOLoss`` and ``dpo_loss`` are imported on first use, so that the
command line checks its input files before it imports torch.
"""

__version__ = "0.1.0"
__all__ = ["DPOLoss", "dpo_loss", "__version__"]


def __getattr__(name: str):
    if name in ("DPOLoss", "dpo_loss"):
        from dpo_retrieval import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
