"""dpo-retrieval: Direct Preference Optimization for dual-encoder retrievers.

The DPO loss lives in :mod:`dpo_retrieval.losses`; the rest is glue around sentence-transformers,
HF datasets, FAISS and BEIR.
"""

from dpo_retrieval.losses import DPOLoss, dpo_loss

__version__ = "0.1.0"
__all__ = ["DPOLoss", "dpo_loss", "__version__"]
