"""`vllm.utils.argparse_utils`: the argument parser of vLLM's command line, which platform and
general plugins subclass or receive (`Platform.pre_register_and_update(parser)`) to add their
own options.

`FlexibleArgumentParser` is an `argparse.ArgumentParser` that, as in vLLM 0.32, accepts
`--option_name` for `--option-name`, dotted options (`--json-arg.key value`, `key+` to append
to a list) merged into one JSON argument, `-O3` for `--optimization-level 3`, a YAML file of
options with `--config FILE` (needs PyYAML), and `deprecated=True` on arguments before Python
3.13. vLLM's `serve`-specific rewriting (`--model` moved to the position, the `--task` hint)
and its grouped, searchable help (`--help=KEYWORD`) are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterable
from typing import Any

from reference.logger import init_logger, warning_once

logger = init_logger("vllm.utils.argparse_utils")

__all__ = ["FlexibleArgumentParser", "SortedHelpFormatter", "human_readable_int"]

_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_readable_int(value: str) -> int:
    """`'25.6k'` → 25600, `'1K'` → 1024, `'7'` → 7: decimal (k, m, g, t) and binary (K, M, G,
    T) suffixes; a binary suffix takes whole numbers only (ArgumentTypeError otherwise)."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if match:
        number, suffix = match.groups()
        if suffix in _DECIMAL:
            return int(float(number) * _DECIMAL[suffix])
        if "." in number:
            raise argparse.ArgumentTypeError(
                f"Decimals are not allowed with binary suffixes like {suffix}. Did you mean "
                f"to use {number}{suffix.lower()} instead?"
            )
        return int(number) * _BINARY[suffix]
    return int(value)


class SortedHelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Help with defaults shown, options sorted by name, and paragraphs and lists kept."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        single_newline = re.compile(r"(?<!\n)\n(?!\n)(?!\s*(-|\*|\+|\d+\.))\s*")
        lines = single_newline.sub(" ", text).splitlines()
        return [wrapped for line in lines for wrapped in textwrap.wrap(line, width)]

    def add_arguments(self, actions: Iterable[argparse.Action]) -> None:
        super().add_arguments(sorted(actions, key=lambda action: action.option_strings))


class _DeprecatingGroup(argparse._ArgumentGroup):
    """An argument group whose arguments take `deprecated=True` (before Python 3.13)."""

    def __init__(self, container: FlexibleArgumentParser, *args: Any, **kwargs: Any) -> None:
        super().__init__(container, *args, **kwargs)
        self._deprecated: set[argparse.Action] = container._deprecated

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return _add_deprecating(super().add_argument, self._deprecated, args, kwargs)


def _add_deprecating(
    add: Any, deprecated: set[argparse.Action], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> argparse.Action:
    """Add an argument, remembering it as deprecated when `deprecated=True` is passed (a
    keyword argparse itself accepts from Python 3.13 on)."""
    if sys.version_info >= (3, 13):
        return add(*args, **kwargs)
    is_deprecated = kwargs.pop("deprecated", False)
    action = add(*args, **kwargs)
    if is_deprecated:
        deprecated.add(action)
    return action


class FlexibleArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that allows both underscore and dash in names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before super().__init__(), which already adds the help argument.
        self._deprecated: set[argparse.Action] = set()
        kwargs.setdefault("formatter_class", SortedHelpFormatter)
        self.add_json_tip = kwargs.pop("add_json_tip", True)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return _add_deprecating(super().add_argument, self._deprecated, args, kwargs)

    def add_argument_group(self, *args: Any, **kwargs: Any) -> argparse._ArgumentGroup:
        group = _DeprecatingGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, rest = super().parse_known_args(args, namespace)
        if sys.version_info < (3, 13):
            for action in self._deprecated:
                dest = action.dest
                if hasattr(namespace, dest) and getattr(namespace, dest) != action.default:
                    warning_once(logger, "argument '%s' is deprecated", dest)
        return namespace, rest

    def parse_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        args = list(sys.argv[1:] if args is None else args)
        if "--config" in args:
            args = self._pull_args_from_config(args)
        return super().parse_args(_merge_dotted(_normalise(args)), namespace)

    def check_port(self, value: Any) -> int:
        """`value` as a port number (1024-65535), for `type=parser.check_port`."""
        try:
            port = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError("Port must be an integer") from None
        if not 1024 <= port <= 65535:
            raise argparse.ArgumentTypeError("Port must be between 1024 and 65535")
        return port

    def _pull_args_from_config(self, args: list[str]) -> list[str]:
        """`args` with `--config FILE` replaced by the options of FILE, placed after a sub
        command (and `serve`'s model) so that the command line still wins over the file."""
        assert args.count("--config") <= 1, "More than one config file specified!"
        index = args.index("--config")
        if index == len(args) - 1:
            raise ValueError("No config file specified! Please check your command-line arguments.")
        config_args = self.load_config_file(args[index + 1])
        rest = args[:index] + args[index + 2 :]
        if args[0].startswith("-"):
            return config_args + rest
        head = 1
        if args[0] == "serve" or args[:2] == ["snapshot", "create"]:
            model_at = 1 if args[0] == "serve" else 2
            model_in_cli = len(args) > model_at and not args[model_at].startswith("-")
            if not model_in_cli and "--model" not in config_args:
                raise ValueError(
                    "No model specified! Please specify model either as a positional "
                    "argument or in a config file."
                )
            head = model_at + 1 if model_in_cli else model_at
        return rest[:head] + config_args + rest[head:]

    def load_config_file(self, file_path: str) -> list[str]:
        """The options of a YAML file as command-line words: `key: value` → `--key value`,
        true → `--key`, false → `--no-key` where the parser has it, a list → `--key a b`, a
        mapping → `--key '<json>'`."""
        extension = file_path.split(".")[-1]
        if extension not in ("yaml", "yml"):
            raise ValueError(f"Config file must be of a yaml/yml type. {extension} supplied")
        import yaml

        try:
            with open(file_path, encoding="utf-8") as handle:
                config: dict[str, Any] = yaml.safe_load(handle)
        except Exception:
            logger.error("Unable to read the config file at %s. Check path correctness", file_path)
            raise
        words: list[str] = []
        for key, value in config.items():
            if isinstance(value, bool):
                if value:
                    words.append(f"--{key}")
                elif f"--no-{key}" in self._option_string_actions:
                    words.append(f"--no-{key}")
            elif isinstance(value, list):
                if value:
                    words += [f"--{key}", *(str(item) for item in value)]
            elif isinstance(value, dict):
                words += [f"--{key}", json.dumps(value)]
            else:
                words += [f"--{key}", str(value)]
        return words


def _normalise(args: list[str]) -> list[str]:
    """Underscores → dashes in option names (up to the first `.` or `=`), and `-O<n>`,
    `-O=<n>`, `-O <digit>` → `--optimization-level <n>`."""
    words: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            name, dot, path = key[2:].partition(".")
            words.append(f"--{name.replace('_', '-')}{dot}{path}{eq}{value}")
        elif arg.startswith("-O") and arg != "-O":
            words += ["--optimization-level", arg[3:] if arg[2] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            words.append("--optimization-level")
        else:
            words.append(arg)
    return words


def _merge_dotted(args: list[str]) -> list[str]:
    """Dotted options (`--arg.key value`, `--arg.key=value`, `--arg.list+ a,b`) merged into
    one `--arg '<json>'` each, appended after the other words; a value is JSON if it parses,
    else a human-readable integer, else the string. Keys given twice are warned about."""
    kept: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    duplicates: set[str] = set()
    seen: set[str] = set()
    skip_next = False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg.startswith("--") and "." not in arg:
            name = arg.partition("=")[0]
            (duplicates if name in seen else seen).add(name)
            kept.append(arg)
            continue
        if not (arg.startswith("-") and "." in arg):
            kept.append(arg)
            continue
        key, eq, text = arg.partition("=")
        if eq and "." not in key:  # the dot was in the value only
            kept.append(arg)
            continue
        if not eq:
            text, skip_next = args[i + 1], True
        if key.endswith("+"):
            key, text = key[:-1], json.dumps(text.split(","))
        head, *path = key.split(".")
        nested: Any = _value(text)
        for part in reversed(path):
            nested = {part: nested}
        duplicates |= {f"{head}.{d}" for d in _update(merged.setdefault(head, {}), nested)}
    if duplicates:
        logger.warning("Found duplicate keys %s", ", ".join(sorted(duplicates)))
    for head, value in merged.items():
        kept += [head, json.dumps(value)]
    return kept


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return human_readable_int(text)
        except (ValueError, argparse.ArgumentTypeError):
            return text


def _update(original: dict[str, Any], update: dict[str, Any]) -> set[str]:
    """Merge `update` into `original` (nested dicts merged, lists extended); the keys that
    were overwritten, dotted."""
    duplicates: set[str] = set()
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(original.get(key), dict):
            duplicates |= {f"{key}.{d}" for d in _update(original[key], value)}
        elif isinstance(value, list) and isinstance(original.get(key), list):
            original[key] += value
        else:
            if key in original:
                duplicates.add(key)
            original[key] = value
    return duplicates
