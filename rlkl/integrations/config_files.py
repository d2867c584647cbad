"""Read verl and TRL configs in their own formats into flat ``{dotted.key: value}`` dicts.

* verl: a YAML file (OmegaConf's loader, so ``1e-3`` is a float as in verl) with Hydra-style ``key=value``
  overrides (``+key=value``, ``++key=value``, ``~key`` too), ``${...}`` interpolations resolved by OmegaConf. A
  file with a Hydra ``defaults:`` list (verl's own ``trainer/config/ppo_trainer.yaml``) is composed with Hydra's
  compose API, exactly as ``python -m verl.trainer.main_ppo`` does (hydra-core comes with verl). The overrides may
  be given as the ``python3 -m verl.trainer.main_ppo ...`` command line of verl's example scripts
  (:func:`split_overrides`).
* TRL: a ``GRPOConfig`` object (or any dataclass with ``to_dict``), its ``to_dict()``, a mapping, or a YAML / JSON
  file (``trl grpo --config file.yaml`` reads YAML with ``yaml.safe_load``).

Malformed input raises ``ValueError`` with the file and line (YAML/JSON marks) or the offending override.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import yaml

__all__ = ["RawConfig", "split_overrides", "load_verl", "load_trl", "flatten"]


@dataclass
class RawConfig:
    """A config as flat dotted keys.

    Attributes:
      framework: "verl" or "trl"; values: ``{key: value}`` (resolved; nested mappings flattened for verl);
      where: ``{key: "file:line"}`` for keys read from a YAML file, ``"override k"`` for the k-th override;
      origin: what was read (display); version: the framework version when known (a TRL object's ``trl``).
    """

    framework: str
    values: dict[str, Any]
    where: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    version: Optional[str] = None


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted keys (empty mappings and lists are values)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------------ YAML helpers
def _yaml_error(path: str, exc: yaml.YAMLError) -> ValueError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    ctx, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if ctx and cmark is not None and cmark is not mark:
        problem += f" ({ctx} that starts at line {cmark.line + 1})"
    return ValueError(f"{where}: malformed YAML: {problem}")


def _key_lines(text: str, path: str) -> dict[str, str]:
    """``{dotted.key: "path:line"}`` of every mapping key of a YAML document (for messages)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                out[key] = f"{path}:{k.start_mark.line + 1}"
                walk(v, key + ".")

    walk(root, "")
    return out


def _read(path: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"a config path must be a string, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"config file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        return fh.read()


# ------------------------------------------------------------------------------------------------ overrides
_OVERRIDE = re.compile(r"^(?P<op>~|\+\+|\+)?(?P<key>[A-Za-z_][\w\-/@]*(?:\.[\w\-/@]+)*)(?P<eq>=(?P<value>.*))?$", re.S)
_SHELL_STOP = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "1>&2"}


def split_overrides(items: Iterable[str] | str) -> list[str]:
    """verl / Hydra overrides from a string (shell-split, e.g. an example script's ``python3 -m
    verl.trainer.main_ppo \\ key=value ...`` line) or a list of tokens.

    Everything up to the ``main_ppo`` entry point is dropped (interpreter, ``-m``, environment assignments), as
    are a trailing pipe / redirection and the shell's ``$@``.
    """
    if isinstance(items, str):
        try:
            tokens = shlex.split(re.sub(r"\\\r?\n", " ", items), comments=True)  # line continuations
        except ValueError as exc:
            raise ValueError(f"cannot split the overrides {items!r}: {exc}") from None
    else:
        tokens = [str(t) for t in items]
    for i, tok in enumerate(tokens):
        if tok.endswith(("main_ppo", "main_ppo.py")) or "verl.trainer." in tok:
            tokens = tokens[i + 1:]
            break
    out = []
    for tok in tokens:
        if tok in _SHELL_STOP or tok.startswith(("2>", "1>", ">")):
            break
        if tok in ("$@", "${@}", "\\"):
            continue
        out.append(tok)
    return out


def _parse_override(tok: str, k: int) -> tuple[str, str, Optional[str]]:
    m = _OVERRIDE.match(tok)
    if m is None or (m.group("op") != "~" and m.group("eq") is None):
        raise ValueError(f"override {k} {tok!r} is not key=value (verl/Hydra syntax: key=value, +key=value, "
                         "++key=value, ~key)")
    return m.group("op") or "", m.group("key"), m.group("value")


# ------------------------------------------------------------------------------------------------ verl
def load_verl(path: Optional[str] = None, overrides: Iterable[str] | str = (),
              mapping: Optional[Mapping[str, Any]] = None) -> RawConfig:
    """A verl config: the YAML ``path`` (or ``mapping``, or nothing: verl's defaults apply later) with the
    Hydra-style ``overrides`` applied and interpolations resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    tokens = split_overrides(overrides)
    parsed = [_parse_override(t, k + 1) for k, t in enumerate(tokens)]
    where: dict[str, str] = {}
    if path is not None:
        text = _read(path)
        where = _key_lines(text, str(path))
        try:
            doc = OmegaConf.create(text)  # OmegaConf's YAML loader: ``1e-3`` is a float, as in verl
        except yaml.YAMLError as exc:
            raise _yaml_error(str(path), exc) from None
        except OmegaConfBaseException as exc:
            raise ValueError(f"{path}: {str(exc).splitlines()[0]}") from None
        if not hasattr(doc, "keys"):
            raise ValueError(f"{path}: a verl config must be a YAML mapping, got a list")
        if "defaults" in doc:
            return _compose(str(path), tokens, where)
        base = doc
    elif mapping is not None:
        if not isinstance(mapping, Mapping):
            raise ValueError(f"a verl config must be a mapping (dict), got {type(mapping).__name__}")
        base = _nest(mapping)
    else:
        base = {}
    origin = str(path) if path is not None else ("a mapping" if mapping is not None else "verl 0.9.1 defaults")
    try:
        cfg = OmegaConf.create(base)
        for k, (op, key, value) in enumerate(parsed):
            where[key] = f"override {k + 1}"
            if op == "~":
                _delete(cfg, key)
                continue
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]))
        values = flatten(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ValueError(f"{origin}: cannot resolve the config{f' at {key}' if key else ''}: "
                         f"{str(exc).splitlines()[0]}") from None
    if tokens:
        origin += f" + {len(tokens)} override{'s' if len(tokens) > 1 else ''}"
    return RawConfig("verl", values, where, origin)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (and nested mappings) → one nested dict."""
    out: dict[str, Any] = {}
    for k, v in flatten(flat).items():
        node = out
        parts = str(k).split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"config key {k!r} conflicts with the value of {p!r}")
            node = nxt
        node[parts[-1]] = v
    return out


def _delete(cfg: Any, key: str) -> None:
    from omegaconf import OmegaConf

    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent is None or last not in parent:
        raise ValueError(f"override ~{key}: no such key in the config")
    del parent[last]


def _compose(path: str, overrides: list[str], where: dict[str, str]) -> RawConfig:
    """Compose a config with a Hydra ``defaults`` list (verl's own ppo_trainer.yaml) via Hydra's compose API."""
    try:
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
    except ImportError:
        raise ValueError(f"{path} composes other config files through a Hydra `defaults:` list; that needs "
                         "hydra-core (installed with verl: pip install 'rlkl[verl]'), or pass a composed config such "
                         "as verl's trainer/config/_generated_ppo_trainer.yaml") from None
    from omegaconf.errors import OmegaConfBaseException

    config_dir = os.path.dirname(os.path.abspath(path))
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose(config_name=name, overrides=list(overrides))
        values = flatten(OmegaConf.to_container(cfg, resolve=True))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(f"{path}: Hydra could not compose the config: {str(exc).strip()}") from None
    for k, tok in enumerate(overrides):
        where[_parse_override(tok, k + 1)[1]] = f"override {k + 1}"
    origin = f"{path} (composed by Hydra)" + (f" + {len(overrides)} overrides" if overrides else "")
    return RawConfig("verl", values, where, origin)


# ------------------------------------------------------------------------------------------------ TRL
def load_trl(source: Any) -> RawConfig:
    """A TRL config from a ``GRPOConfig`` (any dataclass with ``to_dict``), a mapping, or a YAML/JSON file."""
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        values = source.to_dict() if hasattr(source, "to_dict") else dataclasses.asdict(source)
        trl = sys.modules.get("trl")
        version = getattr(trl, "__version__", None) if type(source).__module__.startswith("trl") else None
        return RawConfig("trl", dict(values), {}, f"{type(source).__name__} object", version)
    if isinstance(source, Mapping):
        return RawConfig("trl", dict(source), {}, "a mapping")
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        text = _read(path)
        if path.endswith(".json"):
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None
            where: dict[str, str] = {}
        else:
            where = _key_lines(text, path)
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise _yaml_error(path, exc) from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: a TRL config must be a mapping of GRPOConfig fields, got {type(doc).__name__}")
        return RawConfig("trl", doc, where, path)
    raise ValueError(f"a TRL config must be a GRPOConfig, a dict (its to_dict()) or a YAML/JSON path, got "
                     f"{type(source).__name__}")
