"""pytest plugin of rlkl (entry point ``pytest11: rlkl``): fixtures and options for `rlkl.testing`'s checks.

Installed with rlkl, so any project's plain ``pytest`` gets:

* fixture ``rlkl`` — ``rlkl.optimizes(loss, objective, **overrides)`` / ``rlkl.conforms(loss, method, **overrides)``:
  `assert_optimizes` / `assert_conforms` with the session's settings (trees, seeds, G, on/off-policy, tol);
* fixtures ``rlkl_settings`` (the resolved `RlklSettings`) and ``rlkl_trees`` (the seeded `TreeMDP`s);
* marker ``@pytest.mark.rlkl(group_size=3, off_policy=True, eos="fixed", ...)``: per-test settings;
* options, each as ``--rlkl-NAME`` on the command line or ``rlkl_NAME`` in the ini file (pytest.ini /
  ``[tool.pytest.ini_options]``): ``seeds`` (``0``), ``group-size`` (4), ``vocab`` (3), ``horizon`` (3),
  ``prompts`` (2), ``eos`` (``both`` | ``fixed`` | ``eos``), ``off-policy`` (``false``), ``tol`` (1e-8),
  ``policy`` (``tabular`` | ``loglinear``), ``cases`` (24, `assert_conforms`), ``padding`` (``huge`` | ``nan``).

Precedence: the marker, then the command line, then the ini file, then the defaults above.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import pytest

__all__ = ["RlklSettings", "RlklChecker"]

_EOS = {"both": None, "fixed": False, "eos": True}


@dataclass(frozen=True)
class RlklSettings:
    """The settings of the ``rlkl`` fixtures (see the module docstring for the option names and defaults)."""

    seeds: tuple = (0,)
    group_size: int = 4
    vocab: int = 3
    horizon: int = 3
    prompts: int = 2
    eos: str = "both"
    off_policy: bool = False
    tol: float = 1e-8
    policy: str = "tabular"
    cases: int = 24
    padding: str = "huge"

    def __post_init__(self):
        if self.eos not in _EOS:
            raise ValueError(f"rlkl eos={self.eos!r}: choose one of {list(_EOS)}")
        for name in ("group_size", "vocab", "horizon", "prompts", "cases"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"rlkl {name}={v!r} must be a positive int")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol > 0:
            raise ValueError(f"rlkl tol={self.tol!r} must be a positive number")

    def trees(self):
        from rlkl.testing.asserts import default_trees

        return default_trees(self.vocab, self.horizon, self.prompts, self.seeds, _EOS[self.eos])

    def describe(self) -> str:
        kind = {"both": "fixed-length + EOS", "fixed": "fixed-length", "eos": "EOS"}[self.eos]
        return (f"rlkl: trees V{self.vocab} T{self.horizon} P{self.prompts} ({kind}), seeds {list(self.seeds)}, "
                f"G={self.group_size}, {'off' if self.off_policy else 'on'}-policy, tol {self.tol:g}")


def _parse(name: str, raw: Any) -> Any:
    if name == "seeds":
        if isinstance(raw, (list, tuple)):
            return tuple(int(s) for s in raw)
        return tuple(int(s) for s in str(raw).replace(",", " ").split())
    if name == "off_policy":
        if isinstance(raw, bool):
            return raw
        v = str(raw).strip().lower()
        if v not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"rlkl off_policy={raw!r}: use true or false")
        return v in ("true", "1", "yes")
    if name in ("group_size", "vocab", "horizon", "prompts", "cases"):
        return int(raw)
    if name == "tol":
        return float(raw)
    return str(raw)


def _option(name: str) -> str:
    return name.replace("_", "-")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rlkl", "rlkl: exact checks of policy-gradient losses (rlkl.testing)")
    defaults = RlklSettings()
    for f in fields(RlklSettings):
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        group.addoption(f"--rlkl-{_option(f.name)}", dest=f"rlkl_{f.name}", default=None,
                        help=f"rlkl fixtures: {f.name} (default {shown}; ini: rlkl_{f.name})")
        parser.addini(f"rlkl_{f.name}", help=f"rlkl fixtures: {f.name} (default {shown})", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rlkl(**settings): per-test settings of the rlkl fixtures, e.g. "
                            "rlkl(group_size=3, off_policy=True, eos='fixed', seeds=(0, 1))")
    _session_settings(config)  # a bad --rlkl-* / rlkl_* value is a usage error now, not in the first test using it


def _session_settings(config: pytest.Config) -> RlklSettings:
    values = {}
    for f in fields(RlklSettings):
        raw = config.getoption(f"rlkl_{f.name}")
        if raw is None:
            raw = config.getini(f"rlkl_{f.name}")
        if raw not in (None, "", []):
            try:
                values[f.name] = _parse(f.name, raw)
            except ValueError as exc:
                raise pytest.UsageError(f"rlkl {f.name}={raw!r}: {exc}") from None
    try:
        return RlklSettings(**values)
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    try:
        return _session_settings(config).describe()
    except pytest.UsageError as exc:
        return f"rlkl: {exc}"


@pytest.fixture
def rlkl_settings(request: pytest.FixtureRequest) -> RlklSettings:
    """The resolved settings (marker > command line > ini > defaults)."""
    s = _session_settings(request.config)
    marker = request.node.get_closest_marker("rlkl")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.rlkl takes keyword arguments only, e.g. rlkl(group_size=3)")
        known = {f.name for f in fields(RlklSettings)}
        unknown = sorted(set(marker.kwargs) - known)
        if unknown:
            raise pytest.UsageError(f"@pytest.mark.rlkl: unknown settings {unknown}; known: {sorted(known)}")
        s = replace(s, **{k: _parse(k, v) for k, v in marker.kwargs.items()})
    return s


@pytest.fixture
def rlkl_trees(rlkl_settings: RlklSettings):
    """The seeded random `TreeMDP`s of the settings (what ``rlkl.optimizes`` audits on)."""
    return rlkl_settings.trees()


class RlklChecker:
    """The ``rlkl`` fixture: `assert_optimizes` / `assert_conforms` with the test's settings."""

    def __init__(self, settings: RlklSettings):
        self.settings = settings

    def optimizes(self, loss_fn: Any, objective: Any, **overrides: Any):
        """`rlkl.testing.assert_optimizes` on the settings' trees; keyword arguments override them."""
        __tracebackhide__ = True
        from rlkl.testing.asserts import assert_optimizes

        s = self.settings
        kw = dict(group_size=s.group_size, trees=s.trees(), off_policy=s.off_policy, tol=s.tol, policy=s.policy)
        kw.update(overrides)
        return assert_optimizes(loss_fn, objective, **kw)

    def conforms(self, loss_fn: Any, method: Any, **overrides: Any):
        """`rlkl.testing.assert_conforms` with the settings' case count, padding and seed."""
        __tracebackhide__ = True
        from rlkl.testing.asserts import assert_conforms

        s = self.settings
        kw = dict(n_cases=s.cases, padding=s.padding, seed=s.seeds[0] if s.seeds else 0)
        kw.update(overrides)
        return assert_conforms(loss_fn, method, **kw)


@pytest.fixture
def rlkl(rlkl_settings: RlklSettings) -> RlklChecker:
    """``rlkl.optimizes(loss, objective)`` and ``rlkl.conforms(loss, method)`` with the test's settings."""
    return RlklChecker(rlkl_settings)
