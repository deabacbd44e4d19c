"""Options dataclasses, one typed round trip: dataclass -> command-line flags -> ClearML parameters -> dataclass.

Every options class is a frozen dataclass whose fields are declared with `option(default, help)`: the help text
lives with the field (huggingface/speech-to-speech's argument dataclasses do the same), so `--help` explains each
flag, and the ClearML UI shows the same names. Values come back as strings from both argparse and ClearML;
`parse_value` is the one parser for both. Field metadata also says what a field holds, so generic code can find
it without a list of names: `model_ref` (a model id, folder or `registry:` ref, and how it is located: "hf" a
Hugging Face id or folder, "espnet" the same or an espnet_model_zoo `kan-bayashi/` name (found as its hub mirror),
"vocoder" a parallel_wavegan tag or checkpoint; `revision` names the field that pins it,
`cache_field` the field holding the cache it is looked up in), `cache` (which model cache the field points at: hf,
espnet, vocoder), `fixture_cap` (the value a fixture model set gives the field by default: a decode length,
since random weights never emit end-of-sequence, or no temperature fallback) and `check` (a callable that raises
ValueError for a value the field does not take: `one_of`, `dtype_name`, `switch`, `torch_device`; argparse and
`with_values` run it).
"""

from __future__ import annotations

import argparse
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import Field, asdict, field, fields, replace
from functools import partial
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
METAVARS = {str: "TEXT", int: "N", float: "X", bool: "{true,false}"}


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text (and any of the metadata keys the module docstring lists)."""
    return field(default=default, metadata={"help": help, **meta})


def one_of(*choices: str) -> Callable[[Any], None]:
    """A `check` for a field that takes one of `choices`."""

    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"takes one of {', '.join(choices)}; got {value!r}")

    return check


# The `check` of a dtype field (steps.device.pick_dtype maps the names to torch dtypes).
dtype_name = one_of("auto", "float32", "float16", "bfloat16")


def switch(value: Any) -> None:
    """The `check` of an auto / true / false field (any case; yes / no, on / off and 1 / 0 are read too)."""
    if str(value).strip().lower() not in ("auto", *TRUE_WORDS, *FALSE_WORDS):
        raise ValueError(f"takes auto, true or false; got {value!r}")


def torch_device(value: Any) -> None:
    """The `check` of a device field: auto, cpu, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(value)):
        raise ValueError(f"takes auto, cpu, cuda or cuda:N; got {value!r}")


def check_values(options: Any) -> None:
    """Every field's `check` (metadata: a callable that raises ValueError) run on its value; the error names the
    field. Run where options are read (flags, ClearML parameters), so that a typo stops the run there, before
    its output folder is touched or a step runs, not when the stage that reads the field starts."""
    for f in fields_with(options, "check"):
        try:
            f.metadata["check"](getattr(options, f.name))
        except ValueError as exc:  # "dtype takes one of ...", or the check's own "--replicas takes ..."
            raise ValueError(str(exc) if str(exc).startswith("--") else f"{f.name} {exc}") from None


def fields_with(options: Any, key: str) -> list[Field[Any]]:
    """The fields of an options class or instance that carry metadata `key`."""
    return [f for f in fields(options) if key in f.metadata]


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """Optional[X] -> (X, True); X -> (X, False)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def parse_value(value: Any, hint: Any) -> Any:
    """A field's value from a string (argparse, ClearML parameters, JSON) or an already typed value."""
    hint, optional = _unwrap(hint)
    if isinstance(value, str):
        if optional and value.strip() in ("", "None"):
            return None
        if hint is bool:
            if value.strip().lower() not in (*TRUE_WORDS, *FALSE_WORDS):
                raise ValueError(f"a boolean is true or false, got {value!r}")  # "ture" was read as false
            return value.strip().lower() in TRUE_WORDS
        if hint in (int, float):
            return hint(value.strip())
        return value
    if value is None:
        if optional:
            return None
        raise ValueError(f"a value of type {getattr(hint, '__name__', hint)} is required, got None")
    return hint(value) if hint in (int, float, str) else value


def with_values(options: T, values: Mapping[str, Any]) -> T:
    """A copy of `options` with the given fields parsed from `values` (unknown keys are ignored)."""
    hints = get_type_hints(type(options))
    changes: dict[str, Any] = {}
    for f in fields(options):
        if f.name in values:
            try:
                changes[f.name] = parse_value(values[f.name], hints[f.name])
            except ValueError as exc:  # the field named: a parameter edited in the web UI is found by its name
                raise ValueError(f"{f.name}: {exc}") from None
    updated = replace(options, **changes)  # type: ignore[type-var]
    check_values(updated)
    return updated


def to_params(options: Any) -> dict[str, Any]:
    """The options as ClearML parameters: None becomes "" (ClearML stores strings; parse_value reads it back)."""
    return {key: "" if value is None else value for key, value in asdict(options).items()}


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}{name}"


def add_flags(parser: argparse.ArgumentParser, options: Any, prefix: str, title: str) -> None:
    """One flag per field, `--{prefix}{field-name}`, typed by the one parser, with the field's help text.

    Flags left out stay out of the parsed namespace (SUPPRESS), so `flags_given` knows what the user chose,
    even a value equal to the default: an explicit option must always beat a model set's defaults."""
    group = parser.add_argument_group(title)
    hints = get_type_hints(type(options))
    for f in fields(options):
        default = getattr(options, f.name)
        help_text = f.metadata.get("help", "")
        group.add_argument(
            f"--{prefix}{f.name.replace('_', '-')}",
            dest=_dest(prefix, f.name),
            type=flag_type(options, f.name),
            default=argparse.SUPPRESS,
            metavar=METAVARS.get(_unwrap(hints[f.name])[0], "VALUE"),
            help=f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})",
        )


def flag_type(options: Any, name: str) -> Callable[[str], Any]:
    """The argparse `type` of field `name`'s flag: parsed by the one parser and checked by the field's `check`,
    so a bad value is a usage error. add_flags uses it for every field; a command that offers a few of a section's
    fields under flags of its own (bench-tts's --tts-dtype) uses it for those."""
    owner = options if isinstance(options, type) else type(options)
    found = next(f for f in fields(owner) if f.name == name)
    return partial(_flag_value, hint=get_type_hints(owner)[name], check=found.metadata.get("check"))


def _flag_value(text: str, hint: Any, check: Callable[[Any], None] | None) -> Any:
    """A flag's value, parsed and checked: argparse reports a bad one at once, as a usage error (exit 2)."""
    try:
        value = parse_value(text, hint)
    except ValueError:
        kind = {int: "a whole number", float: "a number", bool: "true or false"}.get(_unwrap(hint)[0], "a value")
        raise argparse.ArgumentTypeError(f"takes {kind}; got {text!r}") from None
    if check is not None:
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def flags_given(args: argparse.Namespace, options: Any, prefix: str) -> dict[str, Any]:
    """The fields of `options` whose flags (made by `add_flags`) were on the command line, with their values."""
    dests = {f.name: _dest(prefix, f.name) for f in fields(options)}
    return {name: getattr(args, dest) for name, dest in dests.items() if hasattr(args, dest)}


def from_flags(args: argparse.Namespace, options: T, prefix: str) -> T:
    """`options` with the values of the flags given on the command line."""
    return replace(options, **flags_given(args, options, prefix))  # type: ignore[type-var]
