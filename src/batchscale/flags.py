"""Command-line flags generated from config dataclasses: each field's flag, help and choices live beside it.

`flag(default, help, ...)` declares a field; `add_flags(parser, Config)` turns every field into its
option (`--batch-size` for `batch_size`; booleans that default to on get a `--no-...` switch), under
the field's group (groups in the class's `help_order`, then the command's own before those it inherits: what it
measures before where it runs); `build(Config, args)` fills the dataclass back.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def flag(default: Any, help: str, *, group: str, name: str | None = None, choices: tuple[str, ...] | None = None,
         metavar: str | None = None, parse: Callable[[str], Any] | None = None, toggle: bool = False,
         aliases: tuple[str, ...] = ()) -> Any:
    """A config field and its flag. `name` overrides the flag spelled from the field (`--no-download` for
    `download`); `toggle` gives both `--x` and `--no-x`; `parse` reads the text (default: the default's type);
    `aliases` are other spellings of the same flag (the name another command uses for it)."""
    meta = {"help": help, "group": group, "name": name, "choices": choices, "metavar": metavar, "parse": parse,
            "toggle": toggle, "aliases": aliases}
    if isinstance(default, (list, tuple, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def same_as(cls: type, name: str, **changes: Any) -> Any:
    """A field declared like `cls`'s field `name` (default, help, choices): one source for a flag two
    commands share. `changes` overrides parts of it, e.g. another default."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = {**source.metadata, **{k: v for k, v in changes.items() if k != "default"}}
    default = changes.get("default", getattr(cls(), name))
    return flag(default, **{k: meta[k] for k in ("help", "group", "name", "choices", "metavar", "parse", "toggle",
                                                  "aliases")})


def option(field: dataclasses.Field) -> str:
    return field.metadata.get("name") or "--" + field.name.replace("_", "-")


def given_options(cls: type, argv: list[str]) -> dict[str, str]:
    """The fields of `cls` that `argv` sets (as the command that receives `argv` will parse them, abbreviations
    and `--flag=value` included), each with the option it was given by; other words are left alone."""
    parser = _Silent(add_help=False)
    add_flags(parser, cls, only_given=True)
    spelled = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    try:
        given, _ = parser.parse_known_args(argv)
    except ValueError:  # a malformed value: the training's own parser reports it, in its words
        return {}
    return {name: spelled[name] for name in vars(given)}


class _Silent(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, only_given: bool = False) -> None:
    """One option per field that has a `flag`. With `only_given`, options left out are absent from the parsed
    namespace (not filled with defaults), so a caller can tell what the user gave."""
    defaults = cls()
    listed = [f for f in help_order(cls) if "help" in f.metadata]
    # The groups in the order --help shows them: the class's `help_order` (what the command measures first, then
    # where it runs and writes), then each other group where its first field comes.
    names = [*getattr(cls, "help_order", ()), *(f.metadata["group"] for f in listed)]
    used = {f.metadata["group"] for f in listed}
    groups = {name: parser.add_argument_group(name) for name in dict.fromkeys(names) if name in used}
    rank = {name: i for i, name in enumerate(groups)}
    for field in sorted(listed, key=lambda f: rank[f.metadata["group"]]):  # the usage line in the same order
        meta = field.metadata
        group = groups[meta["group"]]
        default = getattr(defaults, field.name)
        help_text = meta["help"]
        kwargs: dict[str, Any] = {"dest": field.name}
        if isinstance(default, bool) and meta["parse"] is None:
            if meta["toggle"]:
                kwargs.update(action=argparse.BooleanOptionalAction)
            else:
                kwargs.update(action="store_false" if default else "store_true")
        else:
            kwargs.update(metavar=meta["metavar"], choices=meta["choices"])
            if meta["parse"] is not None:
                kwargs["type"] = meta["parse"]
            elif default is not None and not isinstance(default, str):
                kwargs["type"] = type(default)
            if default is not None and "(default" not in help_text:
                help_text = f"{help_text} (default: {shown(default)})"
        kwargs["default"] = argparse.SUPPRESS if only_given else default
        group.add_argument(option(field), *meta.get("aliases", ()), help=help_text.replace("%", "%%"), **kwargs)


def help_order(cls: type) -> list[dataclasses.Field]:
    """The fields a command declares itself first, then those it inherits: a sweep's grid before the executor flags
    it shares with a study. A field a class only redeclares (a study's --no-wait, with its own help) keeps the
    inherited place, so it does not pull its group to the top."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    own = set(vars(cls).get("__annotations__", {})) - inherited
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)


def build(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **extra)
