"""The only place that knows flag names: the older flags kept as aliases (:data:`ALIASES`), a library
error's field turned into its flag (:func:`flagged`), and config files (YAML/JSON) read into field values.
Imports nothing heavy (the train command checks its triplets before torch loads); the parsers are
:mod:`dpo_retrieval.cli_parser`.

Nothing in the library imports this module.
"""

from __future__ import annotations

import re
from pathlib import Path

from dpo_retrieval.errors import UserInputError

#: the flags README and older scripts use, kept as aliases of the fields they set
ALIASES = {
    "output_dir": ("--output",), "learning_rate": ("--lr",), "per_device_train_batch_size": ("--batch-size",),
    "num_train_epochs": ("--epochs",), "warmup_steps": ("--warmup",),
    "gradient_accumulation_steps": ("--gradient-accumulation",), "top_k": ("-k",),
}
#: fields set through a convenience flag: errors show that flag
SHOWN_AS = {"rank_min": "--rank-window", "rank_max": "--rank-window"}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def flag_name(dest: str) -> str:
    """The flag the CLI shows for a field: its old alias (``--lr``) or the field's dashed spelling."""
    old = [a for a in ALIASES.get(dest, ()) if a.startswith("--")]
    return SHOWN_AS.get(dest) or (old[0] if old else "--" + dest.replace("_", "-"))


def flagged(message: str, dests) -> str:
    """A library error names the field (``beta: must be ...``); the command line shows its flag."""
    m = re.match(r"([a-z][a-z_]*): ", message)
    if not m or m.group(1) not in dests:
        return message
    return flag_name(m.group(1)) + message[len(m.group(1)):]


def split_config(argv: list[str]) -> tuple[dict | None, list[str]]:
    """``(config, rest)``: a first argument ending in .yaml, .yml or .json is a config file."""
    if argv and not argv[0].startswith("-") and Path(argv[0]).suffix.lower() in CONFIG_SUFFIXES:
        return read_config(argv[0]), argv[1:]
    return None, argv


def read_config(path: str) -> dict:
    """A config file's ``{key: value}`` (YAML or JSON), dashes as underscores and one level of nesting
    (``dpo: {beta: 1}``) flattened; the parser resolves each key as it does a flag (``lr`` is learning_rate)."""
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
    flat = {}
    for key, value in data.items():
        flat.update(value if isinstance(value, dict) and key in ("dpo", "mining") else {key: value})
    return {str(k).replace("-", "_"): v for k, v in flat.items()}
