"""``dpo-retrieval train``: its parser, generated from :class:`~dpo_retrieval.training.args.TrainArgs`,
:class:`~dpo_retrieval.training.args.DPOArgs` and sentence-transformers' ``SentenceTransformerTrainingArguments``
(:class:`~dpo_retrieval.cli_parser.ArgParser`); the triplets are checked before torch is imported.

Nothing in the library imports this module.
"""

from __future__ import annotations

import logging

from dpo_retrieval.errors import UserInputError

logger = logging.getLogger("dpo_retrieval")
DESCRIPTION = ("Fine-tune a sentence-transformers dual encoder on (query, positive, negative) triplets with the DPO "
               "loss or a contrastive baseline, and save it in sentence-transformers format. A first argument "
               "ending in .yaml, .yml or .json is a config file of field: value pairs; flags override it. Every "
               "field of sentence-transformers' SentenceTransformerTrainingArguments is an option.")


def train_parser(config: dict | None = None, *, quiet: bool = False):
    """``dpo-retrieval train``'s parser over TrainArgs, DPOArgs and ``SentenceTransformerTrainingArguments``,
    with this package's defaults and ``config`` (a config file's values) as defaults."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    from dpo_retrieval.cli_parser import ArgParser
    from dpo_retrieval.training.args import TRAINING_DEFAULTS, DPOArgs, TrainArgs
    from dpo_retrieval.training.defaults import BUDGET, describe

    parser = ArgParser((TrainArgs, DPOArgs, SentenceTransformerTrainingArguments), prog="dpo-retrieval train",
                       description=DESCRIPTION, config=config,
                       defaults={**TRAINING_DEFAULTS, **{k: None for k in BUDGET},  # by --loss: fill_loss_defaults
                                 "disable_tqdm": True if quiet else None})
    for action in parser._actions:
        if action.dest in BUDGET:
            action.help = (f"{action.help or ''} (default by --loss, the study's: {describe(action.dest)}; "
                           f"other losses {TRAINING_DEFAULTS[action.dest]:g})").strip()
    return parser


def fill_loss_defaults(namespace) -> None:
    """The training arguments left unset (None) get the loss's default
    (:func:`~dpo_retrieval.training.args.budget_defaults`)."""
    from dpo_retrieval.training.args import budget_defaults
    from dpo_retrieval.training.defaults import BUDGET

    defaults = budget_defaults(getattr(namespace, "loss", None))
    for k in BUDGET:
        if getattr(namespace, k, None) is None:
            setattr(namespace, k, defaults[k])


def _flag_value(argv: list[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def run_train(argv: list[str], config: dict | None, *, quiet: bool, dests: set) -> None:
    """Check the triplets, parse (``dests`` gets the parser's fields, to name the flags of errors), train."""
    if not {"-h", "--help"} & set(argv):
        # Check every triplet before torch and sentence-transformers are imported (seconds) and the model is
        # loaded; train() loads the file again from the HF datasets cache this fills.
        triplets = _flag_value(argv, "--triplets") or (config or {}).get("triplets")
        if triplets:
            from dpo_retrieval.data.triplets import load_triplets

            load_triplets(str(triplets), corpus=_flag_value(argv, "--corpus") or (config or {}).get("corpus"),
                          queries=_flag_value(argv, "--queries") or (config or {}).get("queries"))
    from dpo_retrieval.cli_parser import check_config_keys

    parser = train_parser(config, quiet=quiet)
    dests.update(parser.dests())
    check_config_keys(parser)
    namespace = parser.parse_args(argv)
    fill_loss_defaults(namespace)
    try:
        cfg, dpo, targs = parser.build(namespace)
    except ValueError as err:  # transformers' own checks of the training arguments: ours name the field
        from dpo_retrieval.training.args import check_training_arguments

        check_training_arguments(namespace)
        raise UserInputError(str(err).strip().splitlines()[0]) from None
    from dpo_retrieval.training import train

    out = train(cfg, targs, dpo)
    logger.info("saved model to %s (load it with SentenceTransformer(%r))", out, str(out))
