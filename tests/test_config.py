"""`dpo-retrieval train` generated from TrainArgs, DPOArgs and SentenceTransformerTrainingArguments:
config files, the old flags as aliases, field-named errors, and training arguments reaching the trainer."""

import json
from pathlib import Path

import pytest

from dpo_retrieval.cli import main, train_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def triplets(tmp_path) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "q", "positive": "p", "negative": "n"}) + "\n")
    return str(path)


def test_quick_dpo_config_is_the_quick_presets_dpo_training():
    from dpo_retrieval.experiment.compare_args import CompareArgs

    cfg, dpo, args = train_parser().parse_yaml_file(REPO / "configs" / "quick_dpo.yaml")
    quick = CompareArgs(dataset="scifact", output="runs/x", losses=["dpo"], preset="quick").resolved()
    assert (cfg.loss, dpo.policy) == ("dpo", "linear")
    assert (dpo.scale, dpo.beta) == (quick.dpo.scale, quick.dpo.beta) == (20.0, 10.0)
    assert (args.learning_rate, args.per_device_train_batch_size, args.num_train_epochs, cfg.max_seq_length,
            cfg.negatives, args.seed) == (quick.learning_rate, quick.per_device_train_batch_size,
                                          quick.num_train_epochs, quick.train_max_seq_length, quick.train_negatives,
                                          quick.seed)
    assert args.report_to in ("none", [], ["none"])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_then_flags_override_it(suffix, tmp_path, triplets, captured):
    config = {"triplets": triplets, "output_dir": str(tmp_path / "out"), "beta": 2.0, "learning_rate": 1e-4,
              "batch-size": 8}
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(config))  # JSON is YAML too
    assert main(["--quiet", "train", str(path), "--lr", "3e-5", "--max-seq-length", "64"]) == 0
    cfg, dpo, args = captured["cfg"], captured["dpo"], captured["args"]
    assert (dpo.beta, args.learning_rate, args.per_device_train_batch_size, cfg.max_seq_length) == (2.0, 3e-5, 8, 64)
    assert args.output_dir == str(tmp_path / "out") and args.disable_tqdm


def test_old_flags_and_both_spellings_set_the_same_fields(tmp_path, triplets, captured):
    old = ["--triplets", triplets, "--output", str(tmp_path / "a"), "--lr", "1e-4", "--batch-size", "4", "--epochs",
           "2", "--warmup", "5", "--gradient-accumulation", "3", "--save-steps", "7", "--logging-steps", "2",
           "--max-seq-length", "48", "--label-smoothing", "0.1", "--reference-free"]
    new = ["--triplets", triplets, "--output_dir", str(tmp_path / "a"), "--learning_rate", "1e-4",
           "--per_device_train_batch_size", "4", "--num_train_epochs", "2", "--warmup_steps", "5",
           "--gradient_accumulation_steps", "3", "--save_steps", "7", "--logging_steps", "2",
           "--max_seq_length", "48", "--label_smoothing", "0.1", "--reference_free"]
    got = []
    for argv in (old, new):
        assert main(["--quiet", "train", *argv]) == 0
        got.append((captured["cfg"], captured["dpo"], {k: getattr(captured["args"], k) for k in (
            "output_dir", "learning_rate", "per_device_train_batch_size", "num_train_epochs", "warmup_steps",
            "gradient_accumulation_steps", "save_steps", "logging_steps")}))
    assert got[0] == got[1]
    assert got[0][2]["learning_rate"] == 1e-4 and got[0][1].reference_free and got[0][0].max_seq_length == 48


def test_report_to_and_hub_options_reach_the_training_arguments(tmp_path, triplets, captured):
    assert main(["--quiet", "train", "--triplets", triplets, "--output", str(tmp_path / "o")]) == 0
    assert captured["args"].report_to in ("none", [], ["none"])  # the default, no longer hard-coded
    assert main(["--quiet", "train", "--triplets", triplets, "--output", str(tmp_path / "o"), "--report_to",
                 "tensorboard", "--push_to_hub", "--hub_model_id", "me/quick-dpo"]) == 0
    args = captured["args"]
    assert args.report_to == ["tensorboard"] and args.push_to_hub and args.hub_model_id == "me/quick-dpo"


def test_library_errors_name_the_field_and_the_cli_the_flag(tmp_path, triplets, capsys):
    from dpo_retrieval.errors import UserInputError
    from dpo_retrieval.training import DPOArgs

    with pytest.raises(UserInputError, match=r"^beta: must be a finite number > 0, got -1"):
        DPOArgs(beta=-1.0).resolved()
    assert main(["--quiet", "train", "--triplets", triplets, "--output", str(tmp_path / "o"), "--lr", "0"]) == 2
    assert capsys.readouterr().err.strip() == "dpo-retrieval train: error: --lr: must be a finite number > 0, got 0.0"
    assert not (tmp_path / "o").exists()


def test_report_to_tensorboard_writes_event_files(tmp_path, tiny_model_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (the [dev] extra)")
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"p{i}", "negative": f"n{i}"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "out"
    assert main(["--quiet", "train", "--triplets", str(path), "--output", str(out), "--model", tiny_model_path,
                 "--max-steps", "1", "--batch-size", "2", "--max-seq-length", "16", "--precision", "fp32",
                 "--logging-steps", "1", "--report_to", "tensorboard"]) == 0
    assert list(out.rglob("events.out.tfevents*"))
