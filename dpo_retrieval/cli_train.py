"""``dpo-retrieval train``: its parser, generated from :class:`~dpo_retrieval.training.args.TrainArgs`,
:class:`~dpo_retrieval.training.args.DPOArgs` and sentence-transformers' ``SentenceTransformerTrainingArguments``
with ``transformers.HfArgumentParser``; config files (YAML/JSON) under the flags; the old flags as aliases.

Nothing in the library imports this module.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger("dpo_retrieval")


# ----------------------------------------------------------------------------------------------
# train: generated from TrainArgs, DPOArgs and sentence-transformers' training arguments
#: the flags README and older scripts use, kept as aliases of the fields they set
TRAIN_ALIASES = {
    "output_dir": "--output", "learning_rate": "--lr", "per_device_train_batch_size": "--batch-size",
    "num_train_epochs": "--epochs", "warmup_steps": "--warmup", "gradient_accumulation_steps": "--gradient-accumulation",
}
_ARGPARSE_WORDING = ((re.compile(r"invalid int value: (.*)"), r"expected an integer, got \1"),
                     (re.compile(r"invalid float value: (.*)"), r"expected a number, got \1"))


def flag_name(dest: str) -> str:
    """The flag the CLI shows for a field: its old alias (``--lr``) or the field's dashed spelling."""
    return TRAIN_ALIASES.get(dest) or "--" + dest.replace("_", "-")


def _add_train(sub) -> None:
    # A placeholder: its arguments are parsed by train_parser(), which imports transformers only after
    # the triplets are checked (so a bad file fails in a second, before torch loads).
    sub.add_parser(
        "train", add_help=False, help="fine-tune a dual encoder on a triplet file with DPO or a contrastive loss "
                                      "(options: dpo-retrieval train --help; a .yaml/.json config file works too)")


def train_parser(config: dict | None = None, *, quiet: bool = False):
    """``dpo-retrieval train``'s parser: ``transformers.HfArgumentParser`` over TrainArgs, DPOArgs and
    ``SentenceTransformerTrainingArguments``, with this package's defaults, the old flags as aliases,
    ``config`` (a config file's values) as defaults, and one-line errors."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from transformers import HfArgumentParser

    from dpo_retrieval.training.args import TRAINING_DEFAULTS, DPOArgs, TrainArgs

    class Parser(HfArgumentParser):
        def error(self, message: str):
            m = re.match(r"argument (\S+): (.*)", message, re.S)
            if m:
                flags = m.group(1).split("/")
                flag = next((f for f in flags if f in TRAIN_ALIASES.values()), flags[-1])
                problem = m.group(2)
                for pattern, wording in _ARGPARSE_WORDING:
                    problem = pattern.sub(wording, problem)
                message = f"{flag}: {problem}"
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    parser = Parser((TrainArgs, DPOArgs, SentenceTransformerTrainingArguments), prog="dpo-retrieval train",
                    description="Fine-tune a sentence-transformers dual encoder on (query, positive, negative) "
                                "triplets with the DPO loss or a contrastive baseline, and save it in "
                                "sentence-transformers format. A first argument ending in .yaml, .yml or .json is a "
                                "config file of field: value pairs; flags override it. Every field of "
                                "sentence-transformers' SentenceTransformerTrainingArguments is an option.")
    for action in parser._actions:
        alias = TRAIN_ALIASES.get(action.dest)
        if alias and action.option_strings and alias not in parser._option_string_actions:
            action.option_strings.append(alias)
            parser._option_string_actions[alias] = action
    defaults = {**TRAINING_DEFAULTS, "disable_tqdm": True if quiet else None, **(config or {})}
    for action in parser._actions:
        if action.dest in defaults:
            action.default = defaults[action.dest]
            action.required = False
    return parser


def _read_config(path: str) -> dict:
    """A config file's ``{field: value}`` (YAML or JSON; the old flag names work as keys too)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise UserInputError.at(path, None, "no such config file")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError
        raise UserInputError.at(path, None, f"cannot read the config: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserInputError.at(path, None, "expected a mapping of option: value")
    by_alias = {alias.lstrip("-").replace("-", "_"): dest for dest, alias in TRAIN_ALIASES.items()}
    return {by_alias.get(str(k).replace("-", "_"), str(k).replace("-", "_")): v for k, v in data.items()}


def _flag_value(argv: list[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _run_train(args, argv: list[str]) -> None:

    config = None
    if argv and not argv[0].startswith("-") and Path(argv[0]).suffix.lower() in (".yaml", ".yml", ".json"):
        config, argv = _read_config(argv[0]), argv[1:]
    if not {"-h", "--help"} & set(argv):
        # Check every triplet before torch and sentence-transformers are imported (seconds) and the model is
        # loaded; train() loads the file again from the HF datasets cache this fills.
        triplets = _flag_value(argv, "--triplets") or (config or {}).get("triplets")
        if triplets:
            from dpo_retrieval.data.triplets import load_triplets

            load_triplets(str(triplets), corpus=_flag_value(argv, "--corpus") or (config or {}).get("corpus"),
                          queries=_flag_value(argv, "--queries") or (config or {}).get("queries"))
    parser = train_parser(config, quiet=args.quiet)
    if config:
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserInputError(f"config: unknown option {', '.join(map(repr, unknown))}")
    try:
        cfg, dpo, targs = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    except ValueError as err:  # transformers' own checks of the training arguments: ours name the field
        from dpo_retrieval.training.args import check_training_arguments

        check_training_arguments(parser.parse_known_args(argv)[0])
        raise UserInputError(str(err).strip().splitlines()[0]) from None
    from dpo_retrieval.training import train

    out = train(cfg, targs, dpo)
    logger.info("saved model to %s (load it with SentenceTransformer(%r))", out, str(out))
