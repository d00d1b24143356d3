"""--backend auto|torch|onnx: ONNX Runtime encodes like PyTorch, exports are cached, auto's decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpo_retrieval.retrieval import backend_probe, backends, onnx_export
from dpo_retrieval.retrieval.encoding import encode_texts
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.models import load_model

needs_onnx = pytest.mark.skipif(not backends.onnx_available(), reason="onnxruntime/onnx not installed (the [onnx] extra)")

TEXTS = ["cells", "the protein gene expression in human cells is increased by the virus infection",
         "what causes heart disease", "low vitamin levels and sleep in children", "a",
         "insulin response in mice with diabetes and high blood sugar level of the tumor growth signal pathway"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DPO_RETRIEVAL_CACHE", str(root))
    monkeypatch.setattr(backend_probe, "_PROBES", {})
    return root


def _min_cos(a, b) -> float:
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _exports(root) -> list:
    return sorted(p.name for p in (root / "onnx").iterdir() if not p.name.startswith("."))


@needs_onnx
def test_onnx_encodes_like_torch_and_reuses_its_export(tiny_model_path, cache, monkeypatch):
    torch_model = load_model(tiny_model_path, device="cpu")
    onnx_model = load_model(tiny_model_path, device="cpu", backend="onnx")
    assert backends.model_backend(torch_model) == "torch" and backends.model_backend(onnx_model) == "onnx"
    for task in (None, "query", "document"):
        ref = encode_texts(torch_model, TEXTS, batch_size=2, precision="fp32", task=task)
        got = encode_texts(onnx_model, TEXTS, batch_size=2, precision="auto", task=task)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert _min_cos(ref, got) >= 0.9999
    # the export sits in the cache, keyed by the weights; a second load reuses it without exporting
    (digest,) = _exports(cache)
    assert (cache / "onnx" / digest / "model_O2.onnx").is_file()
    monkeypatch.setattr(onnx_export, "_export", lambda *a, **k: pytest.fail("exported again"))
    again = load_model(tiny_model_path, device="cpu", backend="onnx")
    assert backends.model_backend(again) == "onnx" and _exports(cache) == [digest]


@needs_onnx
def test_onnx_refuses_bf16_and_a_gpu_device(tiny_model_path, cache):
    model = load_model(tiny_model_path, device="cpu", backend="onnx")
    with pytest.raises(UserInputError, match="precision: bf16 cannot run on the onnx backend"):
        encode_texts(model, TEXTS, precision="bf16")
    torch_model = load_model(tiny_model_path, device="cpu")
    torch_model.to("meta")  # stands in for a model on a GPU: onnx is refused, auto stays on torch
    with pytest.raises(UserInputError, match="backend: onnx runs on CPU"):
        backends.apply_backend(torch_model, "onnx")


@needs_onnx
def test_auto_follows_a_forced_probe_and_stays_torch_on_cuda(tiny_model_path, cache, monkeypatch):
    monkeypatch.setenv("DPO_RETRIEVAL_BACKEND_PROBE", "onnx")
    assert backends.model_backend(load_model(tiny_model_path, device="cpu", backend="auto")) == "onnx"
    model = load_model(tiny_model_path, device="cpu")
    assert backends.resolve_backend("auto", model, device="cuda") == "torch"
    assert backends.resolve_backend("auto", model, device="cuda:1") == "torch"
    monkeypatch.setenv("DPO_RETRIEVAL_BACKEND_PROBE", "torch")
    assert backends.model_backend(load_model(tiny_model_path, device="cpu", backend="auto")) == "torch"


@needs_onnx
def test_auto_probe_measures_once_and_is_kept_on_disk(tiny_model_path, cache, monkeypatch):
    monkeypatch.delenv("DPO_RETRIEVAL_BACKEND_PROBE", raising=False)
    from dpo_retrieval import models

    monkeypatch.setattr(models, "cpu_bf16_is_faster", lambda: False)
    monkeypatch.setattr(backend_probe, "_measure", lambda model, repeats: {
        "backend": "onnx", "torch_s": 1.0, "onnx_s": 0.5, "speedup": 2.0, "min_cosine": 1.0, "texts": 32})
    model = load_model(tiny_model_path, device="cpu")
    assert backends.resolve_backend("auto", model) == "onnx"
    saved = json.loads((cache / "backend_probe.json").read_text())
    (entry,) = saved.values()
    assert entry["backend"] == "onnx" and entry["key"]["cpus"] and entry["key"]["shape"][0]["hidden_size"] == 32
    # another process (empty in-memory cache) reads the decision back instead of measuring again
    monkeypatch.setattr(backend_probe, "_PROBES", {})
    monkeypatch.setattr(backend_probe, "_measure", lambda *a, **k: pytest.fail("measured again"))
    assert backends.resolve_backend("auto", model) == "onnx"
    # a decision measured on a busy machine is measured again once the machine is quiet
    import os

    monkeypatch.setattr(backend_probe, "_PROBES", {})
    saved[next(iter(saved))]["busy"] = True
    (cache / "backend_probe.json").write_text(json.dumps(saved))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(backend_probe, "_measure", lambda model, repeats: {
        "backend": "torch", "torch_s": 1.0, "onnx_s": 1.5, "speedup": 0.67, "min_cosine": 1.0, "texts": 24})
    assert backends.resolve_backend("auto", model) == "torch"
    assert not json.loads((cache / "backend_probe.json").read_text())[next(iter(saved))]["busy"]
    # bf16 autocast is the lever on CPUs where it wins: auto stays on torch without probing
    monkeypatch.setattr(models, "cpu_bf16_is_faster", lambda: True)
    assert backends.resolve_backend("auto", model) == "torch"


@needs_onnx
def test_the_real_probe_decides_by_speed_and_cosine(tiny_model_path, cache, monkeypatch):
    monkeypatch.delenv("DPO_RETRIEVAL_BACKEND_PROBE", raising=False)
    model = load_model(tiny_model_path, device="cpu")
    entry = backends.probe(model, repeats=1)
    assert entry["min_cosine"] >= 0.9999 and entry["backend"] in ("torch", "onnx")
    assert entry["backend"] == ("onnx" if entry["onnx_s"] < backends.PROBE_MAX_RATIO * entry["torch_s"] else "torch")
    assert backends.model_backend(model) == "torch"  # probing leaves the model as it was


@needs_onnx
def test_a_fine_tuned_model_exports_the_same_way(tiny_model_path, tmp_path, cache):
    from dpo_retrieval.cli import main

    triplets = tmp_path / "t.jsonl"
    triplets.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in [
        ("what causes cancer", "mutation causes cancer cells", "the water fiber"),
        ("does sleep increase risk", "sleep and heart disease risk", "vitamin and infants")] * 2))
    out = tmp_path / "trained"
    assert main(["--quiet", "train", "--triplets", str(triplets), "--output", str(out), "--model", tiny_model_path,
                 "--batch-size", "2", "--max-steps", "2", "--lr", "1e-3", "--precision", "fp32"]) == 0
    load_model(tiny_model_path, device="cpu", backend="onnx")
    tuned = load_model(str(out), device="cpu", backend="onnx")
    assert backends.model_backend(tuned) == "onnx" and len(_exports(cache)) == 2  # new weights, new export
    ref = encode_texts(load_model(str(out), device="cpu"), TEXTS, precision="fp32")
    assert _min_cos(ref, encode_texts(tuned, TEXTS)) >= 0.9999


@needs_onnx
def test_two_tower_model_exports_both_towers(tiny_model, cache):
    from dpo_retrieval.models import make_two_towers

    towers = make_two_towers(tiny_model)
    next(iter(towers[0].sub_modules["query"].parameters())).data.mul_(1.5)  # make the towers differ
    ref = {t: encode_texts(towers, TEXTS, task=t, precision="fp32") for t in ("query", "document")}
    backends.apply_backend(towers, "onnx")
    assert backends.model_backend(towers) == "onnx"
    for t in ("query", "document"):
        assert _min_cos(ref[t], encode_texts(towers, TEXTS, task=t)) >= 0.9999


def test_missing_onnxruntime_is_one_clean_line(tiny_model_path, cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(onnx_export, "onnx_available", lambda: False)
    with pytest.raises(UserInputError) as err:
        load_model(tiny_model_path, device="cpu", backend="onnx")
    assert "pip install 'dpo-retrieval[onnx]'" in str(err.value) and "\n" not in str(err.value)
    # auto quietly stays on torch
    monkeypatch.delenv("DPO_RETRIEVAL_BACKEND_PROBE", raising=False)
    assert backends.model_backend(load_model(tiny_model_path, device="cpu", backend="auto")) == "torch"

    from dpo_retrieval.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "d1", "title": "", "text": "cells"}) + "\n")
    capsys.readouterr()
    assert main(["--quiet", "index", "--corpus", str(corpus), "--output", str(tmp_path / "idx"), "--model", tiny_model_path,
                 "--backend", "onnx"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("dpo-retrieval index: error: --backend:") and "dpo-retrieval[onnx]" in line
    assert "\n" not in line and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("command", ["index", "search", "evaluate", "mine", "compare"])
def test_every_encoding_command_takes_backend_and_a_bad_value_exits_2(command, capsys):
    from dpo_retrieval.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    action = next(a for a in sub._actions if a.dest == "backend")
    assert tuple(action.choices) == ("auto", "torch", "onnx") and action.default == "auto"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([command, "--backend", "tensorrt"])
    assert exit_.value.code == 2 and "--backend" in capsys.readouterr().err
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    assert not any(a.dest == "backend" for a in train._actions)  # training always runs torch


@needs_onnx
def test_evaluate_through_onnx_matches_torch_and_keys_the_cache(tiny_model_path, tmp_path, cache, monkeypatch):
    from test_beir import make_dataset

    from dpo_retrieval.cli import main

    monkeypatch.setenv("DPO_RETRIEVAL_DATA", str(tmp_path / "data"))
    make_dataset(tmp_path / "data" / "toy")
    emb = tmp_path / "emb.npy"
    res = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.json"
        assert main(["--quiet", "evaluate", "--model", tiny_model_path, "--dataset", "toy", "--top-k", "5",
                     "--output", str(out), "--backend", backend, "--embeddings-cache", str(emb)]) == 0
        res[backend] = json.loads(out.read_text())
        assert res[backend]["backend"] == backend
        assert backend == "torch" or res[backend]["precision"] == "fp32"
        assert res[backend]["timings"]["encode_corpus_s"] > 0  # torch's cached embeddings are not onnx's
        assert json.loads(emb.with_suffix(".npy.json").read_text())["backend"] == backend
    for k, v in res["torch"]["metrics"].items():
        assert res["onnx"]["metrics"][k] == pytest.approx(v, abs=1e-6)
