"""Each loss's defaults (training.defaults, the study's best dev settings): where an option is not given, train,
compare and sweep use the loss's own; an option given always wins; the finals' recorded keys do not move."""

import json

import pytest

from dpo_retrieval.cli import main
from dpo_retrieval.experiment.compare import model_settings
from dpo_retrieval.experiment.compare_args import CompareArgs
from dpo_retrieval.experiment.sweep import defaulted_settings
from dpo_retrieval.experiment.variants import variant_config
from dpo_retrieval.mining import MineArgs
from dpo_retrieval.training.args import TRAINING_DEFAULTS, DPOArgs, TrainArgs, training_arguments
from dpo_retrieval.training.defaults import LOSS_DEFAULTS
from dpo_retrieval.training.train import default_negatives


@pytest.fixture()
def triplets(tmp_path) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2", "n3", "n4"]}) + "\n")
    return str(path)


def _budget(args):
    return args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size


@pytest.mark.parametrize("loss", ["dpo", "contrastive", "cmnrl", "dpo+mnrl", "sdpo", "dpr"])
def test_train_takes_the_losss_defaults_where_no_option_is_given(loss, tmp_path, triplets, captured):
    assert main(["--quiet", "train", "--triplets", triplets, "--output_dir", str(tmp_path / "o"), "--loss", loss]) == 0
    own = {**TRAINING_DEFAULTS, **LOSS_DEFAULTS.get(loss, {})}
    assert _budget(captured["args"]) == (own["learning_rate"], own["num_train_epochs"],
                                         own["per_device_train_batch_size"])
    dpo = captured["dpo"].resolved(loss)
    assert dpo.beta == 10.0 and dpo.mnrl_scale == LOSS_DEFAULTS.get(loss, {}).get("mnrl_scale", 20.0)
    assert dpo.mnrl_weight == 0.75


def test_a_flag_or_config_value_beats_the_losss_default(tmp_path, triplets, captured):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"num_train_epochs": 7, "mnrl_scale": 30}))
    assert main(["--quiet", "train", str(config), "--triplets", triplets, "--output_dir", str(tmp_path / "o"),
                 "--loss", "cmnrl", "--lr", "3e-5"]) == 0
    assert _budget(captured["args"]) == (3e-5, 7, 128)  # the batch size is still cmnrl's own
    assert captured["dpo"].resolved("cmnrl").mnrl_scale == 30


def test_the_help_says_each_losss_default():
    from dpo_retrieval.cli_train import train_parser

    text = train_parser().format_help()
    assert "dpo 0.0001" in " ".join(text.split()) and "cmnrl 128" in " ".join(text.split())


def test_python_api_defaults_follow_the_loss():
    assert training_arguments("o", "contrastive").learning_rate == 1e-4
    assert training_arguments("o", "contrastive", learning_rate=1e-5).num_train_epochs == 4.0
    assert training_arguments("o").learning_rate == TRAINING_DEFAULTS["learning_rate"]
    assert DPOArgs().resolved("cmnrl").mnrl_scale == 40.0 and DPOArgs(mnrl_scale=5.0).resolved("cmnrl").mnrl_scale == 5.0
    assert DPOArgs(policy="sigmoid").resolved("dpo").beta == 10.0 and DPOArgs(beta=1.0).resolved("dpo").beta == 1.0


class _Columns:
    def __init__(self, k):
        self.column_names = ["anchor", "positive", *(f"negative_{i}" for i in range(1, k + 1))]


def test_train_uses_the_losss_negatives_at_most_the_files():
    assert default_negatives(TrainArgs(triplets="t", loss="contrastive"), _Columns(6)) == 4
    assert default_negatives(TrainArgs(triplets="t", loss="dpo"), _Columns(1)) == 1  # capped, not an error
    assert default_negatives(TrainArgs(triplets="t", loss="dpr"), _Columns(4)) is None  # untuned: all
    assert default_negatives(TrainArgs(triplets="t", loss="dpo", negatives=3), _Columns(4)) == 3


def test_compare_gives_each_loss_its_own_settings_under_the_run_and_the_variants():
    cfg = CompareArgs(dataset="scifact", output="r", losses=["dpo", "contrastive", "cmnrl", "custom"], preset="full",
                      variants={"custom": {"loss": "dpo", "learning_rate": 3e-5}})
    got = {name: variant_config(cfg, name)[1] for name in cfg.losses}
    assert (got["dpo"].learning_rate, got["dpo"].num_train_epochs, got["dpo"].train_negatives) == (1e-4, 4.0, 4)
    assert (got["contrastive"].learning_rate, got["contrastive"].train_negatives, got["contrastive"].dpo.mnrl_scale) \
        == (1e-4, 4, 20.0)
    assert (got["cmnrl"].per_device_train_batch_size, got["cmnrl"].dpo.mnrl_scale) == (128, 40.0)
    assert (got["custom"].learning_rate, got["custom"].num_train_epochs) == (3e-5, 4.0)  # the variant's, then dpo's
    assert model_settings("cmnrl", got["cmnrl"])["mnrl_scale"] == 40.0 and "beta" not in model_settings("cmnrl", got["cmnrl"])
    # the run's own options beat every loss's default; the quick preset's one epoch too
    cfg = CompareArgs(dataset="scifact", output="r", losses=["dpo", "cmnrl"], learning_rate=5e-5, preset="quick")
    assert {n: (variant_config(cfg, n)[1].learning_rate, variant_config(cfg, n)[1].num_train_epochs)
            for n in cfg.losses} == {"dpo": (5e-5, 1.0), "cmnrl": (5e-5, 1.0)}
    # fewer mined negatives than a loss's default: it trains on what was mined
    one = CompareArgs(dataset="scifact", output="r", losses=["dpo"], mining=MineArgs(negatives=1))
    assert variant_config(one, "dpo")[1].train_negatives == 1


def test_a_sweep_points_key_changes_only_where_what_it_trains_with_changed():
    explicit = {"loss": "dpo", "num_train_epochs": 1, "per_device_train_batch_size": 32, "learning_rate": 1e-4,
                "beta": 10.0}
    assert defaulted_settings(explicit, file_negatives=1) == {}  # keys recorded before stay
    assert defaulted_settings(explicit, file_negatives=4) == {}  # dpo's default 4 is every negative of the file
    assert defaulted_settings({**explicit, "loss": "contrastive", "mnrl_scale": 20}, file_negatives=6) == {
        "negatives": 4}
    assert defaulted_settings({"loss": "dpo"}, file_negatives=1) == {
        "learning_rate": 1e-4, "num_train_epochs": 4.0, "beta": 10.0}


def test_a_sweep_option_set_to_none_or_made_moot_is_not_given():
    base = {"loss": "contrastive", "num_train_epochs": 1, "per_device_train_batch_size": 32, "learning_rate": 2e-5,
            "mnrl_scale": 20}
    assert defaulted_settings({**base, "negatives": None}, file_negatives=6) == {"negatives": 4}
    steps = {k: v for k, v in base.items() if k != "num_train_epochs"}
    assert defaulted_settings({**steps, "max_steps": 5}, file_negatives=1) == {}  # epochs do not matter
    assert defaulted_settings(steps, file_negatives=1) == {"num_train_epochs": 4.0}


def test_a_run_of_several_losses_records_their_options_as_given():
    cfg = CompareArgs(dataset="scifact", output="r", losses=["contrastive", "cmnrl"]).resolved()
    assert cfg.dpo.mnrl_scale is None and cfg.dpo.mnrl_weight is None and cfg.learning_rate is None
    assert CompareArgs(dataset="scifact", output="r", losses=["cmnrl"]).resolved().dpo.mnrl_scale == 40.0
