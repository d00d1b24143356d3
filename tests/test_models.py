"""dpo_retrieval.models: device and precision resolution, model loading, two towers."""

import pytest

from dpo_retrieval import models
from dpo_retrieval.errors import UserInputError
from dpo_retrieval.models import resolve_device, resolve_precision


@pytest.mark.parametrize("forced, expected", [("1", "bf16"), ("0", "fp32")])
def test_resolve_precision_auto_on_cpu_follows_the_bf16_speed_check(monkeypatch, forced, expected):
    monkeypatch.setenv("DPO_RETRIEVAL_CPU_BF16", forced)
    models.cpu_bf16_is_faster.cache_clear()
    try:
        assert resolve_precision("auto", "cpu") == expected
    finally:
        models.cpu_bf16_is_faster.cache_clear()


def test_resolve_precision_auto_on_cuda_picks_bf16_or_fp16(monkeypatch):
    monkeypatch.setattr(models.torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(models.torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda:0") == "bf16"


def test_resolve_precision_auto_elsewhere_is_fp32():
    assert resolve_precision("auto", "mps") == "fp32"


def test_resolve_precision_explicit_and_refused():
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(UserInputError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(UserInputError, match="unknown value 'fp8'"):
        resolve_precision("fp8", "cpu")


def test_resolve_device_auto_and_missing_cuda(monkeypatch):
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") in ("cpu", "mps")
    with pytest.raises(UserInputError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_two_towers_round_trip(tiny_model):
    assert not models.has_two_towers(tiny_model)
    assert models.has_two_towers(models.make_two_towers(tiny_model))
