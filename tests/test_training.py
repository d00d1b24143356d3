"""`dpo-retrieval train` end to end: tiny BERT for every loss, the real MiniLM on SciFact triplets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer

from dpo_retrieval.cli import main
from _triplets import TRIPLETS as SHARED_TRIPLETS

TRIPLETS = SHARED_TRIPLETS[:6]


def write_jsonl(path: Path, rows=TRIPLETS) -> Path:
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in rows))
    return path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def train_args(tiny_model_path, triplets, out, *extra):
    return ["--quiet", "train", "--triplets", str(triplets), "--output", str(out), "--model", tiny_model_path,
            "--batch-size", "3", "--max-seq-length", "32", "--logging-steps", "1", "--precision", "fp32", *extra]


@pytest.mark.parametrize("loss", ["dpo", "contrastive", "dpr"])
def test_train_saves_a_loadable_model_and_a_log(tmp_path, tiny_model_path, loss):
    out = tmp_path / loss
    assert main(train_args(tiny_model_path, write_jsonl(tmp_path / "t.jsonl"), out, "--loss", loss, "--epochs", "2")) == 0
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["hi"]).shape == (1, 32)
    log = read_log(out)
    steps = [r for r in log if "loss" in r]
    assert steps and steps[-1]["step"] == 4  # 6 triplets / batch 3 * 2 epochs: the final step is logged
    if loss == "dpo":
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(steps[-1])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["config"]["loss"] == loss
    assert summary["config"]["dropout"] == "on"
    assert loss in (out / "README.md").read_text()  # the model card names the loss


def test_online_reference_and_separate_towers(tmp_path, tiny_model_path):
    out = tmp_path / "towers"
    args = train_args(tiny_model_path, write_jsonl(tmp_path / "t.jsonl"), out, "--reference", "online",
                      "--separate-towers", "--max-steps", "2")
    assert main(args) == 0
    model = SentenceTransformer(str(out), device="cpu")
    q, d = model.encode_query(["what causes cancer"]), model.encode_document(["what causes cancer"])
    assert q.shape == d.shape == (1, 32)
    assert abs(float((q * d).sum()) - 1.0) > 1e-6  # the towers have diverged


def _mean_margin(model_path) -> float:
    model = SentenceTransformer(str(model_path), device="cpu")
    q, p, n = (model.encode([t[i] for t in TRIPLETS]) for i in range(3))
    return float(((q * p).sum(-1) - (q * n).sum(-1)).mean())


def test_dpo_training_widens_the_positive_negative_margin(tmp_path, tiny_model_path):
    out = tmp_path / "m"
    assert main(train_args(tiny_model_path, write_jsonl(tmp_path / "t.jsonl"), out, "--epochs", "6",
                           "--lr", "1e-3", "--warmup", "0", "--loss", "dpo")) == 0
    before, after = _mean_margin(tiny_model_path), _mean_margin(out)
    assert after > before, (before, after)
    assert [r for r in read_log(out) if "loss" in r][-1]["rewards/margins"] > 0


@pytest.mark.parametrize("dropout", ["off", "on"])
def test_dpo_starts_at_log2_only_without_dropout(tmp_path, tiny_model_path, dropout):
    """Step 1's loss is computed before any update, with the policy equal to the reference: exactly
    log 2 and zero margin when dropout is off; with dropout on, its noise moves both."""
    import math

    out = tmp_path / dropout
    assert main(train_args(tiny_model_path, write_jsonl(tmp_path / "t.jsonl"), out, "--batch-size", "6",
                           "--max-steps", "1", "--dropout", dropout, "--loss", "dpo")) == 0
    first = [r for r in read_log(out) if "loss" in r][0]
    if dropout == "off":
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    else:
        assert abs(first["loss"] - math.log(2)) > 1e-3
    saved = SentenceTransformer(str(out), device="cpu")
    assert saved[0].auto_model.config.hidden_dropout_prob == 0.1  # the saved config keeps its dropout


def test_negatives_trains_on_the_first_negatives_only(tmp_path, tiny_model_path, capsys):
    """--negatives 1 on a 2-negative file trains exactly as the 1-negative file does (same batches, same
    reference scores, same weights); more negatives than the file has is a one-line error naming the flag."""
    import torch

    one = write_jsonl(tmp_path / "one.jsonl")
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps({"query": q, "positive": p, "negatives": [n, f"{n} of the {i} mice"]}) + "\n"
                           for i, (q, p, n) in enumerate(TRIPLETS)))
    weights = {}
    for name, triplets, extra in (("one", one, []), ("cut", two, ["--negatives", "1"])):
        out = tmp_path / name
        assert main(train_args(tiny_model_path, triplets, out, "--max-steps", "2", *extra)) == 0
        weights[name] = SentenceTransformer(str(out), device="cpu").state_dict()
    assert json.loads((tmp_path / "cut" / "train_summary.json").read_text())["config"]["negatives"] == 1
    assert all(torch.equal(weights["one"][k], weights["cut"][k]) for k in weights["one"])
    capsys.readouterr()
    assert main(train_args(tiny_model_path, two, tmp_path / "never", "--negatives", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--negatives: 3 asked for, but {two} has 2 negatives per triplet") and len(err.splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_bad_triplets_fail_cleanly_without_output(tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p", "negative": "n"}\n{"query": "q2", "positive": ""\n')
    out = tmp_path / "never"
    assert main(train_args(tiny_model_path, bad, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2:" in err and "Traceback" not in err
    assert not out.exists()


def test_nonfinite_loss_stops_and_saves_nothing(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "nan"
    code = main(train_args(tiny_model_path, write_jsonl(tmp_path / "t.jsonl"), out, "--lr", "1e30", "--epochs", "4",
                           "--warmup", "0", "--loss", "dpr"))
    assert code == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "at step" in err
    assert not (out / "modules.json").exists()


@pytest.mark.slow
def test_train_real_minilm_on_scifact_triplets(tmp_path, beir_data):
    """The packaged all-MiniLM-L6-v2 trains on triplets built from real SciFact train qrels."""
    root = beir_data / "scifact"
    corpus = {}
    with open(root / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = (d.get("title", "") + " " + d["text"]).strip()
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in open(root / "queries.jsonl")}
    qrels = [l.split("\t") for l in (root / "qrels" / "train.tsv").read_text().splitlines()[1:9]]
    rng = random.Random(0)
    doc_ids = list(corpus)
    rows = [(queries[q], corpus[d], corpus[rng.choice(doc_ids)]) for q, d, _ in qrels]
    out = tmp_path / "minilm"
    args = ["--quiet", "train", "--triplets", str(write_jsonl(tmp_path / "s.jsonl", rows)), "--output", str(out),
            "--batch-size", "4", "--max-seq-length", "64", "--max-steps", "2", "--logging-steps", "1"]
    assert main(args) == 0
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["hi"]).shape == (1, 384)
    assert read_log(out)[-1]["step"] == 2


def test_fp16_scaler_overflow_is_left_to_the_scaler(tmp_path, tiny_model_path, monkeypatch):
    """fp16 AMP, simulated on CPU with a real GradScaler in the accelerator: an inf gradient is the
    scaler's routine overflow (at its initial scale 65536). Under the default --on-nonfinite stop the
    run goes on, the guard neither stops nor zeroes the gradients (the scaler must see the inf to skip
    the step and back off), and the skipped step is counted apart from the guard's skipped batches."""
    import torch

    from dpo_retrieval.training import trainer as training

    made = {}
    make_accelerator = training.PreferenceTrainer.create_accelerator_and_postprocess

    def with_scaler(self):
        make_accelerator(self)
        self.accelerator.scaler = made["scaler"] = torch.amp.GradScaler("cpu", init_scale=65536.0)

    step = training.PreferenceTrainer.training_step

    def overflow_on_first_step(self, model, inputs, *args, **kwargs):
        loss = step(self, model, inputs, *args, **kwargs)
        if self.state.global_step == 0:
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(training.PreferenceTrainer, "create_accelerator_and_postprocess", with_scaler)
    monkeypatch.setattr(training.PreferenceTrainer, "training_step", overflow_on_first_step)
    out = tmp_path / "fp16"
    assert main(train_args(tiny_model_path, write_jsonl(tmp_path / "t.jsonl"), out, "--max-steps", "2")) == 0
    assert made["scaler"].get_scale() == 32768.0  # the scaler saw the overflow, skipped and backed off once
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["scaler_skipped_steps"] == 1 and summary["skipped_batches"] == 0
    steps = [r for r in read_log(out) if "loss" in r]
    assert [r.get("scaler_skipped_steps") for r in steps] == [1, 1]
    assert not any("skipped_batches" in r for r in steps)
