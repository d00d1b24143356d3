"""The command line's parsers, generated from the library's option dataclasses with
``transformers.HfArgumentParser`` (``--top_k`` and ``--top-k`` both work; a field typed as a dataclass
contributes that dataclass's options), with the old flags as aliases, config-file values as defaults
and one-line errors naming the flag.

Nothing in the library imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from copy import copy
from typing import get_type_hints

from transformers import HfArgumentParser

from dpo_retrieval.cli_args import ALIASES, flag_name
from dpo_retrieval.errors import UserInputError

_ARGPARSE_WORDING = ((re.compile(r"invalid int value: (.*)"), r"expected an integer, got \1"),
                     (re.compile(r"invalid float value: (.*)"), r"expected a number, got \1"))


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" unless the option is required or its help already says what the default is
    ("(default: ...)", "(default by loss: ...)")."""

    def _get_help_string(self, action):
        if action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _nested(hint) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


class ArgParser(HfArgumentParser):
    """``HfArgumentParser`` over option dataclasses, where a field typed as a dataclass (``CompareArgs.dpo``)
    contributes that dataclass's fields, a field name already added (``seed``) is shared, the old flags are
    aliases, ``defaults`` and a config file's values are the defaults, and errors are one line.

    ``exclusive``: pairs of fields of which exactly one is given (argparse's mutually exclusive groups);
    ``extra``: a callable adding arguments that no dataclass declares (convenience flags)."""

    def __init__(self, dataclass_types=(), *, defaults=None, config=None, exclusive=(), extra=None, **kwargs):
        self._added: set[str] = set()
        super().__init__(dataclass_types, **{"formatter_class": _Formatter, **kwargs})
        if extra:
            extra(self)
        for action in list(self._actions):
            for alias in ALIASES.get(action.dest, ()):
                if action.option_strings and alias not in self._option_string_actions:
                    action.option_strings.append(alias)
                    self._option_string_actions[alias] = action
        self.config = {self._dest_of(key): value for key, value in (config or {}).items()}
        config = self.config
        defaults = {**(defaults or {}), **config}
        for action in self._actions:
            if action.dest in defaults:
                action.default = defaults[action.dest]
                action.required = False
        by_dest = {a.dest: a for a in self._actions if a.option_strings}
        for names in exclusive:
            group = self.add_mutually_exclusive_group(required=not set(names) & set(config))
            group._group_actions.extend(by_dest[n] for n in names)

    def _dest_of(self, key: str) -> str:
        """A config key's field: the key itself, or the field whose flag it spells (``lr``, ``batch_size``)."""
        if key in self.dests():
            return key
        action = self._option_string_actions.get("--" + key) or self._option_string_actions.get(
            "--" + key.replace("_", "-"))
        return action.dest if action else key

    def _add_dataclass_arguments(self, dtype) -> None:
        hints = get_type_hints(dtype)
        group = self.add_argument_group(f"{dtype.__name__} options")
        for f in dataclasses.fields(dtype):
            if not f.init or f.name in self._added:
                continue
            if _nested(hints[f.name]):
                self._add_dataclass_arguments(hints[f.name])
                continue
            self._added.add(f.name)
            f = copy(f)  # HfArgumentParser rewrites field.type; leave the class's own field alone
            f.type = hints[f.name]
            self._parse_dataclass_field(group, f)

    def build(self, namespace) -> list:
        """The dataclass objects from parsed values (their checks run here)."""
        values = vars(namespace)

        def make(dtype):
            hints = get_type_hints(dtype)
            kwargs = {f.name: make(hints[f.name]) if _nested(hints[f.name]) else values[f.name]
                      for f in dataclasses.fields(dtype) if f.init and (_nested(hints[f.name]) or f.name in values)}
            return dtype(**kwargs)

        return [make(dtype) for dtype in self.dataclass_types]

    def dests(self) -> set[str]:
        return {a.dest for a in self._actions}

    def error(self, message: str):
        def shown(m):  # "--top_k/--top-k/-k" -> "--top-k"; "--learning_rate/--learning-rate/--lr" -> "--lr"
            action = self._option_string_actions.get(m.group(0).split("/")[0])
            return flag_name(action.dest) if action else m.group(0)

        message = re.sub(r"-{1,2}[\w-]+(?:/-{1,2}[\w-]+)*", shown, message)
        m = re.match(r"argument (\S+): (.*)", message, re.S)
        if m:
            problem = m.group(2)
            for pattern, wording in _ARGPARSE_WORDING:
                problem = pattern.sub(wording, problem)
            message = f"{m.group(1)}: {problem}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def check_config_keys(parser: ArgParser) -> None:
    """A config file's keys that are no option of the command: one error naming them."""
    unknown = sorted(set(parser.config) - parser.dests())
    if unknown:
        raise UserInputError(f"config: unknown option {', '.join(map(repr, unknown))}")
