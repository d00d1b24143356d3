"""WiSE-FT weight interpolation (dpo_retrieval.training.merge): the end points are the two models, the
middle is the parameter average, mismatched models and a failed save leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from dpo_retrieval.errors import UserInputError
from dpo_retrieval.training.merge import interpolate_state_dicts, merge_models

TEXTS = ["what causes cancer", "insulin signal pathway", "the water fiber"]


@pytest.fixture()
def finetuned_path(tmp_path, tiny_model_path) -> str:
    """The tiny model with every float weight moved: a stand-in for a fine-tuned model."""
    model = SentenceTransformer(tiny_model_path, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    path = tmp_path / "ft"
    model.save(str(path))
    return str(path)


def _embed(path) -> np.ndarray:
    return SentenceTransformer(str(path), device="cpu").encode(TEXTS)


def test_alpha_0_is_the_base_and_1_the_finetuned(tmp_path, tiny_model_path, finetuned_path):
    base_out = merge_models(tiny_model_path, finetuned_path, tmp_path / "a0", alpha=0.0)
    ft_out = merge_models(tiny_model_path, finetuned_path, tmp_path / "a1", alpha=1.0)
    np.testing.assert_allclose(_embed(base_out), _embed(tiny_model_path), atol=1e-6)
    np.testing.assert_allclose(_embed(ft_out), _embed(finetuned_path), atol=1e-6)
    assert not np.allclose(_embed(tiny_model_path), _embed(finetuned_path), atol=1e-3)


def test_alpha_half_is_the_parameter_average(tmp_path, tiny_model_path, finetuned_path):
    out = merge_models(tiny_model_path, finetuned_path, tmp_path / "half", alpha=0.5)
    base = SentenceTransformer(tiny_model_path, device="cpu").state_dict()
    ft = SentenceTransformer(finetuned_path, device="cpu").state_dict()
    merged = SentenceTransformer(str(out), device="cpu").state_dict()
    assert merged.keys() == base.keys()
    for name, value in merged.items():
        want = (base[name].double() + ft[name].double()) / 2 if value.is_floating_point() else base[name]
        torch.testing.assert_close(value.double(), want.double(), atol=1e-6, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_mismatched_architectures_are_refused(tmp_path, tiny_model_path):
    from sentence_transformers.sentence_transformer.modules import Pooling

    model = SentenceTransformer(tiny_model_path, device="cpu")
    no_normalize = SentenceTransformer(modules=[model[0], Pooling(32, "mean")], device="cpu")
    other = tmp_path / "other"
    no_normalize.save(str(other))
    with pytest.raises(UserInputError, match="merge: different architectures") as err:
        merge_models(tiny_model_path, other, tmp_path / "out", alpha=0.5)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_interpolate_refuses_different_names_and_shapes():
    a = {"w": torch.zeros(2, 3), "ids": torch.arange(3)}
    with pytest.raises(UserInputError, match="shape"):
        interpolate_state_dicts(a, {"w": torch.zeros(3, 2), "ids": torch.arange(3)}, 0.5)
    with pytest.raises(UserInputError, match="names"):
        interpolate_state_dicts(a, {"v": torch.zeros(2, 3), "ids": torch.arange(3)}, 0.5)
    with pytest.raises(UserInputError, match="non-float"):
        interpolate_state_dicts(a, {"w": torch.zeros(2, 3), "ids": torch.arange(3) + 1}, 0.5)
    got = interpolate_state_dicts(a, {"w": torch.ones(2, 3), "ids": torch.arange(3)}, 0.25)
    torch.testing.assert_close(got["w"], torch.full((2, 3), 0.25))
    assert torch.equal(got["ids"], torch.arange(3))


def test_bad_alpha_existing_output_and_failed_save_leave_nothing(tmp_path, tiny_model_path, finetuned_path,
                                                                  monkeypatch):
    with pytest.raises(UserInputError, match="alpha"):
        merge_models(tiny_model_path, finetuned_path, tmp_path / "x", alpha=1.5)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("keep")
    with pytest.raises(UserInputError, match="not an empty directory"):
        merge_models(tiny_model_path, finetuned_path, busy, alpha=0.5)
    assert (busy / "file").read_text() == "keep"

    def broken_save(self, path, *args, **kwargs):
        Path(path, "modules.json").write_text("[]")  # half-written
        raise OSError("disk full")

    monkeypatch.setattr(SentenceTransformer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        merge_models(tiny_model_path, finetuned_path, tmp_path / "failed", alpha=0.5)
    assert not (tmp_path / "failed").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_merge_command_positional_and_errors(tmp_path, tiny_model_path, capsys):
    import torch
    from sentence_transformers import SentenceTransformer

    from dpo_retrieval.cli import main

    tuned = SentenceTransformer(tiny_model_path, device="cpu")
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.5)
    tuned.save(str(tmp_path / "tuned"))
    assert main(["--quiet", "merge", "--alpha", "0.25", tiny_model_path, str(tmp_path / "tuned"),
                 str(tmp_path / "out")]) == 0
    base = SentenceTransformer(tiny_model_path, device="cpu").state_dict()
    merged = SentenceTransformer(str(tmp_path / "out"), device="cpu").state_dict()
    name = next(k for k, v in base.items() if v.is_floating_point())
    assert torch.allclose(merged[name], base[name] + 0.25 * 0.5, atol=1e-6)
    assert main(["--quiet", "merge", tiny_model_path, str(tmp_path / "tuned")]) == 2
    assert "expected three paths" in capsys.readouterr().err
    assert main(["--quiet", "merge", "--alpha", "1.5", tiny_model_path, str(tmp_path / "tuned"),
                 str(tmp_path / "out2")]) == 2
    assert "--alpha" in capsys.readouterr().err and not (tmp_path / "out2").exists()
