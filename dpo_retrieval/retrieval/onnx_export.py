"""The ONNX backend: export a transformer once, cache it, and run it with ONNX Runtime in place of PyTorch.

Each transformer of a loaded sentence-transformers model is exported to ONNX (PyTorch's exporter),
optimised at optimum's ``O2`` level (onnxruntime's transformer fusions: attention, LayerNorm, GELU,
embedding) and cached under ``~/.cache/dpo_retrieval/onnx/<hash of the weights>/``; :func:`to_onnx`
then swaps an ONNX Runtime session in for the transformer's PyTorch model. Tokenizer, pooling,
normalisation, prompts and ``Router`` towers stay sentence-transformers' own.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger(__name__)

LEVELS = ("none", "O1", "O2", "O3")
DEFAULT_LEVEL = "O2"
INSTALL_HINT = "pip install 'dpo-retrieval[onnx]'"
_EXPORT_FORMAT = 1  # bump when the export recipe changes: old cache entries are then ignored
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: model types whose graph onnxruntime's BERT fusions understand (the rest get ORT's generic passes)
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "camembert", "albert",
              "ernie", "nomic_bert", "modernbert"}


def cache_root() -> Path:
    """``$DPO_RETRIEVAL_CACHE`` or ``~/.cache/dpo_retrieval`` (ONNX exports and probe results)."""
    root = os.environ.get("DPO_RETRIEVAL_CACHE")
    return Path(root).expanduser() if root else Path("~/.cache/dpo_retrieval").expanduser()


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnx(option: str = "backend") -> None:
    if not onnx_available():
        raise UserInputError(f"{option}: onnxruntime and onnx are not installed; {INSTALL_HINT}")


class OnnxTransformer(torch.nn.Module):
    """Runs an exported transformer with ONNX Runtime; called like the transformers model it replaces.

    ``forward(input_ids, attention_mask, token_type_ids)`` returns a ``BaseModelOutput`` whose
    ``last_hidden_state`` is a float32 CPU tensor (what sentence-transformers' Transformer reads)."""

    def __init__(self, path: str | os.PathLike, config) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.onnx_path = str(path)
        self.config = config
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {n: given[n].detach().cpu().numpy().astype(np.int64, copy=False) for n in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))

    def extra_repr(self) -> str:
        return f"onnx_path={self.onnx_path!r}"


def transformer_modules(model) -> list:
    """The sentence-transformers ``Transformer`` modules of ``model`` (two for a two-tower ``Router``)."""
    from sentence_transformers.base.modules.transformer import Transformer

    return [m for m in model.modules() if isinstance(m, Transformer)]


def model_backend(model) -> str:
    """``onnx`` when ``model``'s transformer runs in ONNX Runtime, else ``torch``."""
    try:
        mods = transformer_modules(model)
    except Exception:  # noqa: BLE001 - not a sentence-transformers model
        return "torch"
    return "onnx" if any(isinstance(m.model, OnnxTransformer) for m in mods) else "torch"


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot run on ONNX here (None when it can)."""
    from transformers import PreTrainedModel

    mods = transformer_modules(model)
    if not mods:
        return "the model has no transformer module"
    for m in mods:
        if isinstance(m.model, OnnxTransformer):
            continue
        if not isinstance(m.model, PreTrainedModel):
            return f"its transformer is a {type(m.model).__name__}, not a transformers model"
        if set(getattr(m, "modality_config", {"text": None})) != {"text"}:
            return "only text models are supported"
        if getattr(m.model.config, "is_encoder_decoder", False):
            return "encoder-decoder models are not supported"
    return None


# ----------------------------------------------------------------------------------------------
# export
def weights_digest(hf_model, level: str = DEFAULT_LEVEL) -> str:
    """A hash of the transformer's weights, config and the export recipe: the cache key of an export."""
    import onnxruntime

    h = hashlib.sha256()
    recipe = {"format": _EXPORT_FORMAT, "level": level, "torch": torch.__version__.split("+")[0],
              "onnxruntime": onnxruntime.__version__, "class": type(hf_model).__name__}
    h.update(json.dumps(recipe, sort_keys=True).encode())
    h.update(hf_model.config.to_json_string(use_diff=False).encode())
    for name, t in sorted(hf_model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


class _LastHidden(torch.nn.Module):
    def __init__(self, hf_model, names: list[str]) -> None:
        super().__init__()
        self.model = hf_model
        self.names = names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs)), return_dict=True).last_hidden_state


def _export(hf_model, target: Path, level: str) -> None:
    """Export ``hf_model`` to ``target`` (an .onnx file), optimised at ``level``."""
    import warnings

    params = inspect.signature(hf_model.forward).parameters
    names = [n for n in _INPUTS if n in params]
    raw = target.with_name("raw.onnx")
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) if n != "token_type_ids" else torch.zeros((2, 8), dtype=torch.long)
                  for n in names)
    old_impl = getattr(hf_model.config, "_attn_implementation", None)
    was_training = hf_model.training
    hf_model.eval()
    try:
        if old_impl not in (None, "eager") and hasattr(hf_model, "set_attn_implementation"):
            hf_model.set_attn_implementation("eager")  # the attention pattern onnxruntime fuses
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHidden(hf_model, names), dummy, str(raw), dynamo=False, input_names=names,
                output_names=["last_hidden_state"], opset_version=17, do_constant_folding=True,
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                              "last_hidden_state": {0: "batch", 1: "sequence"}})
    finally:
        if old_impl not in (None, "eager") and hasattr(hf_model, "set_attn_implementation"):
            hf_model.set_attn_implementation(old_impl)
        hf_model.train(was_training)
    if level == "none":
        os.replace(raw, target)
        return
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = getattr(hf_model.config, "model_type", "")
    bert_like = model_type in _BERT_LIKE
    options = FusionOptions("bert")
    options.enable_gelu_approximation = level == "O3"
    cfg = hf_model.config
    quiet = logging.root.manager.disable
    logging.disable(logging.INFO)  # onnxruntime's fusion passes log every step at INFO
    try:
        optimized = optimize_model(
            str(raw), "bert", num_heads=getattr(cfg, "num_attention_heads", 0) if bert_like else 0,
            hidden_size=getattr(cfg, "hidden_size", 0) if bert_like else 0, optimization_options=options,
            opt_level=1 if level == "O1" else 2, use_gpu=False, only_onnxruntime=not bert_like)
        optimized.save_model_to_file(str(target), use_external_data_format=False)
    finally:
        logging.disable(quiet)
    raw.unlink(missing_ok=True)


def export_dir(hf_model, level: str = DEFAULT_LEVEL) -> Path:
    return cache_root() / "onnx" / weights_digest(hf_model, level)


def ensure_export(hf_model, level: str = DEFAULT_LEVEL) -> Path:
    """The cached ONNX file for ``hf_model`` at ``level``, exported (atomically) when missing."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    final = export_dir(hf_model, level)
    path = final / f"model_{level}.onnx"
    if path.is_file():
        logger.debug("reusing the ONNX export %s", path)
        return path
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    t0 = time.perf_counter()
    try:
        _export(hf_model, tmp / path.name, level)
        (tmp / "export.json").write_text(json.dumps({
            "level": level, "model_type": getattr(hf_model.config, "model_type", None),
            "name_or_path": getattr(hf_model.config, "_name_or_path", None),
            "seconds": round(time.perf_counter() - t0, 2)}, indent=2) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same export first
            if not path.is_file():
                raise
    except UserInputError:
        raise
    except Exception as err:
        raise UserInputError(f"backend: exporting the model to ONNX failed: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported the model to ONNX (%s) in %.1f s: %s", level, time.perf_counter() - t0, path)
    return path


# ----------------------------------------------------------------------------------------------
# switching a loaded model
def onnx_swaps(model, level: str) -> list[tuple]:
    """``[(transformer module, its torch model, an OnnxTransformer for it)]``."""
    out = []
    for m in transformer_modules(model):
        if isinstance(m.model, OnnxTransformer):
            continue
        out.append((m, m.model, OnnxTransformer(ensure_export(m.model, level), m.model.config)))
    return out


def to_onnx(model, level: str = DEFAULT_LEVEL):
    """Switch ``model`` (a CPU sentence-transformers model) to ONNX Runtime in place; returns it."""
    require_onnx()
    why = unsupported_reason(model)
    if why:
        raise UserInputError(f"backend: cannot run this model on ONNX Runtime: {why}")
    for module, _torch_model, onnx_model in onnx_swaps(model, level):
        module.model = onnx_model
    return model
