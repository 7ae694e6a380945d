"""Config fields that carry their own command-line flag: one source for an option's default, help text,
choices and parser, and for whether it changes output bytes (the shard fingerprint).

    seed: int = output_option(0, "noise seed: same seed, same mattes")
    batch_size: int = runtime_option(1, "segments per forward pass", parse=int_at_least(1))

:func:`add_flags` turns a config dataclass into argparse flags (``--batch-size``), and
:func:`from_args` turns the parsed flags back into the config.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable


def _field(default, meta: dict) -> Any:
    if default is dict or default is list:
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option(default, why: str = "", *, choices=None, parse: Callable | None = None, flag: str | bool = True,
           metavar: str | None = None, group: str | None = None, fingerprint: bool | None = None,
           omit_default: bool = False, resolved: bool = False) -> Any:
    """A config field with its flag: ``why`` is the help text; ``choices``/``parse`` check the value;
    ``flag`` renames the flag (e.g. ``"--no-progress"`` for a True default) or hides it (False); ``group``
    names its --help section; ``fingerprint`` says whether it changes output bytes (None: not said);
    ``omit_default``: an output option added after shards were written joins the fingerprint only when
    set to something else than its default, so those shards (which the default reproduces) stay valid;
    ``resolved``: an output option a matter fingerprints as it acts, not as configured (``dtype`` 'auto'
    as 'fp32' on CPU); every other one is fingerprinted as configured, so a rerun can be refused for it
    before any matter loads. ``default`` may be ``dict`` or ``list`` (a fresh one per instance)."""
    meta = {"why": why, "choices": tuple(choices) if choices is not None else None, "parse": parse,
            "flag": flag, "metavar": metavar, "group": group, "omit_default": omit_default, "resolved": resolved}
    if fingerprint is not None:
        meta["fingerprint"] = fingerprint
    return _field(default, meta)


def output_option(default, why: str = "", **flag: Any) -> Any:
    """A field that changes the bytes a matter writes: it joins the shard fingerprint."""
    return option(default, why, fingerprint=True, **flag)


def runtime_option(default, why: str = "", **flag: Any) -> Any:
    """A field that changes speed, memory or placement, not the mattes beyond float rounding (or whose
    effect is identified otherwise, e.g. by the weights' sha256): recorded, not fingerprinted."""
    return option(default, why, fingerprint=False, **flag)


def is_classified(f: dataclasses.Field) -> bool:
    """True when a dataclass field says whether it changes output (``fingerprint`` metadata)."""
    return isinstance(f.metadata.get("fingerprint"), bool)


def output_fields(cls) -> tuple[str, ...]:
    """Names of the fields of a config dataclass that change output bytes."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("fingerprint"))


def configured_fields(cls) -> tuple[str, ...]:
    """Names of the output fields of a config dataclass that are fingerprinted as configured (not ``resolved``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("fingerprint")
                 and not f.metadata.get("resolved"))


def fingerprint_options(cfg, names=None) -> dict:
    """The output options of config ``cfg`` (only ``names`` when given) as they join a fingerprint:
    ``omit_default`` fields only when set to something else than their default."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("fingerprint") or (names is not None and f.name not in names):
            continue
        value = getattr(cfg, f.name)
        if f.metadata.get("omit_default") and value == _default(f):
            continue
        out[f.name] = value
    return out


# --- value parsers ------------------------------------------------------------------------------------


def _parsed(text: str, conv: Callable[[str], Any], what: str) -> Any:
    """``conv(text)``, or the argparse error "'text' is not <what>"."""
    try:
        return conv(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo``."""
    def parse(text: str) -> int:
        v = _parsed(text, int, "an integer")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is less than {lo}")
        return v
    parse.__name__ = f"int>={lo}"
    return parse


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi``."""
    def parse(text: str) -> int:
        v = int_at_least(lo)(text)
        if v > hi:
            raise argparse.ArgumentTypeError(f"{v} is more than {hi}")
        return v
    parse.__name__ = f"int in {lo}..{hi}"
    return parse


def number_at_least(lo: float) -> Callable[[str], float]:
    """An argparse type: a number >= ``lo``."""
    def parse(text: str) -> float:
        v = _parsed(text, float, "a number")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v:g} is less than {lo:g}")
        return v
    parse.__name__ = f"number>={lo:g}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    v = _parsed(text, float, "a number")
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1]")
    return v


# --- flags ------------------------------------------------------------------------------------------------


def flag_name(f: dataclasses.Field) -> str | None:
    """The flag of a field (``--long-side``), or None when it has none."""
    flag = f.metadata.get("flag", False if "why" not in f.metadata else True)
    if flag is False:
        return None
    return flag if isinstance(flag, str) else "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_flags(parser: argparse.ArgumentParser, cls, *, groups: dict[str, Any] | None = None,
              suppress: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` that has one (see :func:`option`), in ``groups[field group]`` or
    ``parser``. ``suppress``: fields whose default comes from elsewhere (e.g. a preset): their flag is
    absent from the parsed namespace unless given, and its note (``suppress[name]``) ends the help."""
    groups, suppress = groups or {}, suppress or {}
    for f in dataclasses.fields(cls):
        name = flag_name(f)
        if name is None or f.name in skip:
            continue
        m = f.metadata
        target = groups.get(m.get("group") or "", parser)
        default = _default(f)
        kw: dict[str, Any] = {"dest": f.name, "help": m.get("why") or ""}
        if isinstance(default, bool) and m.get("parse") is None:
            kw["action"] = "store_false" if name.startswith("--no-") else "store_true"
        else:
            parse = m.get("parse") or (type(default) if isinstance(default, (int, float, str)) else str)
            kw["type"] = parse
            if m.get("choices"):
                kw["choices"] = list(m["choices"])
            if m.get("metavar"):
                kw["metavar"] = m["metavar"]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if f.name in suppress:
            kw["default"] = argparse.SUPPRESS
            kw["help"] = f"{kw['help']} {suppress[f.name]}".strip()
        elif required or "action" in kw:  # no "(default: ...)" in --help for these
            kw["default"] = argparse.SUPPRESS
        else:
            kw["default"] = default
        if required:
            kw["required"] = True
        target.add_argument(name, **kw)


def from_args(cls, args: argparse.Namespace, **fixed: Any):
    """An instance of ``cls`` from the flags :func:`add_flags` made (those absent from ``args`` keep their
    default), with ``fixed`` values for the rest."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if flag_name(f) is not None and hasattr(args, f.name)}
    return cls(**{**given, **fixed})
