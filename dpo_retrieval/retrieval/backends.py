"""Encoding backends: PyTorch, or the same model's transformer run by ONNX Runtime.

``--backend onnx`` exports each transformer of a loaded sentence-transformers model to ONNX once
(PyTorch's exporter), optimises the graph at optimum's ``O2`` level (onnxruntime's transformer
fusions: attention, LayerNorm, GELU, embedding), caches the file under
``~/.cache/dpo_retrieval/onnx/<hash of the weights>/`` and swaps an ONNX Runtime session in for the
transformer's PyTorch model. Tokenizer, pooling, normalisation, prompts and ``Router`` towers stay
sentence-transformers' own, so ``encode_texts`` and every caller work unchanged.

(sentence-transformers' ``backend="onnx"`` would do the same through optimum-onnx, but optimum-onnx
pins transformers < 4.58; this module needs only ``onnxruntime`` and ``onnx``: the ``[onnx]`` extra.)

``--backend auto`` keeps PyTorch on CUDA/MPS, on CPUs where bf16 autocast is the faster lever, and
where onnxruntime is absent; otherwise a short probe (a few seconds, once per machine and model
shape, cached in ``~/.cache/dpo_retrieval/backend_probe.json``) picks ONNX only when it encodes
faster than PyTorch at cosine >= 0.9999. ``DPO_RETRIEVAL_BACKEND_PROBE=torch|onnx`` skips the probe.
Training always runs PyTorch (``load_model``'s default backend).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.models import cpu_name

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
LEVELS = ("none", "O1", "O2", "O3")
DEFAULT_LEVEL = "O2"
INSTALL_HINT = "pip install 'dpo-retrieval[onnx]'"
#: ONNX is picked by ``auto`` only at this cosine to PyTorch (every probe text) ...
PROBE_MIN_COSINE = 0.9999
#: ... and only when its median probe time is below this share of PyTorch's (noise margin).
PROBE_MAX_RATIO = 0.95
_EXPORT_FORMAT = 1  # bump when the export recipe changes: old cache entries are then ignored
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: model types whose graph onnxruntime's BERT fusions understand (the rest get ORT's generic passes)
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "camembert", "albert",
              "ernie", "nomic_bert", "modernbert"}
_PROBE_WORDS = ("the cell protein gene patients cancer risk increase effect study human blood brain heart "
                "disease treatment drug dose level water fiber birth weight vitamin diabetes insulin virus "
                "infection immune response tumor growth signal pathway expression mutation sleep age children "
                "women men analysis results clinical trial data model evidence").split()


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


def require_onnx(option: str = "--backend onnx") -> None:
    if not onnx_available():
        raise UserInputError(f"{option}: onnxruntime and onnx are not installed; {INSTALL_HINT}")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserInputError(f"--backend: unknown value {backend!r}; choose auto, torch or onnx")
    return backend


# ----------------------------------------------------------------------------------------------
# the ONNX Runtime stand-in for a transformers model
class OnnxTransformer(torch.nn.Module):
    """Runs an exported transformer with ONNX Runtime; called like the transformers model it replaces.

    ``forward(input_ids, attention_mask, token_type_ids)`` returns a ``BaseModelOutput`` whose
    ``last_hidden_state`` is a float32 CPU tensor (what sentence-transformers' Transformer reads)."""

    def __init__(self, path: str | os.PathLike, config, *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
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


def _transformer_modules(model) -> list:
    from sentence_transformers.base.modules.transformer import Transformer

    return [m for m in model.modules() if isinstance(m, Transformer)]


def model_backend(model) -> str:
    """``onnx`` when ``model``'s transformer runs in ONNX Runtime, else ``torch``."""
    try:
        mods = _transformer_modules(model)
    except Exception:  # noqa: BLE001 - not a sentence-transformers model
        return "torch"
    return "onnx" if any(isinstance(m.model, OnnxTransformer) for m in mods) else "torch"


def _unsupported(model) -> str | None:
    """Why ``model`` cannot run on ONNX here (None when it can)."""
    from transformers import PreTrainedModel

    mods = _transformer_modules(model)
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
        raise UserInputError(f"--backend onnx: exporting the model to ONNX failed: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported the model to ONNX (%s) in %.1f s: %s", level, time.perf_counter() - t0, path)
    return path


# ----------------------------------------------------------------------------------------------
# switching a loaded model
def _onnx_models(model, level: str) -> list[tuple]:
    """``[(transformer module, its torch model, an OnnxTransformer for it)]``."""
    out = []
    for m in _transformer_modules(model):
        if isinstance(m.model, OnnxTransformer):
            continue
        out.append((m, m.model, OnnxTransformer(ensure_export(m.model, level), m.model.config)))
    return out


def to_onnx(model, level: str = DEFAULT_LEVEL):
    """Switch ``model`` (a CPU sentence-transformers model) to ONNX Runtime in place; returns it."""
    require_onnx()
    why = _unsupported(model)
    if why:
        raise UserInputError(f"--backend onnx: cannot run this model on ONNX Runtime: {why}")
    for module, _torch_model, onnx_model in _onnx_models(model, level):
        module.model = onnx_model
    return model


def apply_backend(model, backend: str = "torch"):
    """Run ``model`` on ``backend`` (``auto``, ``torch`` or ``onnx``); returns the model (changed in place)."""
    check_backend(backend)
    if backend == "torch":
        return model
    if backend == "onnx":
        if torch.device(model.device).type != "cpu":
            raise UserInputError(f"--backend onnx: runs on CPU; the model is on {model.device} (use --device cpu "
                                 "or --backend torch)")
        return to_onnx(model)
    return to_onnx(model) if resolve_backend("auto", model) == "onnx" else model


# ----------------------------------------------------------------------------------------------
# auto
def resolve_backend(backend: str, model, device: str | None = None) -> str:
    """The backend ``backend`` stands for with ``model`` on ``device`` (default: the model's): torch or onnx."""
    check_backend(backend)
    if backend != "auto":
        return backend
    device = str(device or model.device)
    if not device.startswith("cpu"):
        return "torch"
    forced = os.environ.get("DPO_RETRIEVAL_BACKEND_PROBE", "").strip().lower()
    if forced in ("torch", "onnx"):
        return forced if forced == "torch" or onnx_available() else "torch"
    if not onnx_available():
        logger.debug("--backend auto: onnxruntime not installed, using torch")
        return "torch"
    from dpo_retrieval.models import cpu_bf16_is_faster

    if cpu_bf16_is_faster():
        return "torch"  # bf16 autocast is this CPU's lever; ONNX would run fp32
    if _unsupported(model):
        return "torch"
    return probe(model)["backend"]


def probe_key(model) -> dict:
    """What the probe's answer depends on: this machine, the libraries and the model's shape."""
    import onnxruntime

    cfgs = [m.model.config for m in _transformer_modules(model)]
    shape = [{k: getattr(c, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                 "num_attention_heads", "intermediate_size")} for c in cfgs]
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "level": DEFAULT_LEVEL,
            "max_seq_length": getattr(model, "max_seq_length", None), "shape": shape}


def _probe_file() -> Path:
    return cache_root() / "backend_probe.json"


def _read_probes() -> dict:
    try:
        return json.loads(_probe_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_probe(key: str, entry: dict) -> None:
    path = _probe_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_probes()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as err:  # a read-only home only costs a re-measurement next time
        logger.warning("could not save the backend probe to %s: %s", path, err)


def _probe_texts(max_len: int, n: int = 24) -> list[str]:
    lengths = [max(8, int(max_len * f)) for f in (1.0, 0.75, 0.5, 0.25)]
    return [" ".join(_PROBE_WORDS[(i * 7 + j) % len(_PROBE_WORDS)] for j in range(lengths[i % 4]))
            for i in range(n)]


def probe(model, *, repeats: int = 3, fresh: bool = False) -> dict:
    """Measure (or recall) whether ONNX Runtime beats PyTorch for this model shape on this machine.

    ``fresh``: measure even when a decision is cached (and replace it)."""
    key_dict = probe_key(model)
    key = hashlib.sha1(json.dumps(key_dict, sort_keys=True).encode()).hexdigest()[:16]
    cached = None if fresh else _probe_cached(key)
    if cached is not None:
        return cached
    load = _load_average()
    entry = _measure(model, repeats)
    entry = {**entry, "key": key_dict, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": load,
             "busy": _busy(load)}
    _write_probe(key, entry)
    _PROBES[key] = entry
    logger.info("--backend auto: ONNX %.2fx torch's speed at min cosine %.6f on the probe -> %s (saved in %s)",
                entry["speedup"], entry["min_cosine"], entry["backend"], _probe_file())
    return entry


_PROBES: dict[str, dict] = {}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _busy(load: float | None) -> bool:
    """More runnable processes than cores: timings then say more about the neighbours than the backends."""
    return load is not None and load > (os.cpu_count() or 1)


def _probe_cached(key: str) -> dict | None:
    if key in _PROBES:
        return _PROBES[key]
    entry = _read_probes().get(key)
    if isinstance(entry, dict) and entry.get("backend") in ("torch", "onnx"):
        if entry.get("busy") and not _busy(_load_average()):
            return None  # measured on a busy machine: measure again now that it is quiet
        _PROBES[key] = entry
        return entry
    return None


def _measure(model, repeats: int) -> dict:
    from dpo_retrieval.retrieval.encoding import encode_texts

    texts = _probe_texts(int(getattr(model, "max_seq_length", None) or 256))
    swaps = _onnx_models(model, DEFAULT_LEVEL)

    def use(which: int) -> None:
        for s in swaps:
            s[0].model = s[which]

    def run(which: int) -> tuple[float, np.ndarray]:
        use(which)
        t0 = time.perf_counter()
        emb = encode_texts(model, texts, precision="fp32", normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - t0, emb

    times: dict[int, list[float]] = {1: [], 2: []}
    embs = {}
    try:
        for which in (1, 2):  # warm-up
            use(which)
            encode_texts(model, texts[:4], precision="fp32", show_progress_bar=False)
        for r in range(repeats):
            for which in ((1, 2) if r % 2 == 0 else (2, 1)):
                seconds, embs[which] = run(which)
                times[which].append(seconds)
    finally:
        use(1)
    cos = float(np.min(np.sum(embs[1] * embs[2], axis=1)))
    t_torch, t_onnx = statistics.median(times[1]), statistics.median(times[2])
    pick = "onnx" if cos >= PROBE_MIN_COSINE and t_onnx < PROBE_MAX_RATIO * t_torch else "torch"
    return {"backend": pick, "torch_s": round(t_torch, 4), "onnx_s": round(t_onnx, 4),
            "speedup": round(t_torch / t_onnx, 3), "min_cosine": round(cos, 6), "texts": len(texts)}
