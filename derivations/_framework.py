"""A tiny registry of executable derivations.

An *identity* is a function decorated with :func:`identity`; it receives a :class:`Derivation` and walks through
the written derivation one step at a time, calling ``d.eq(lhs, rhs, label)`` for every ``=`` sign. Each step is
checked the moment it is recorded; the first step that does not hold raises :class:`StepFailed`, which carries the
residual ``lhs − rhs`` (after simplification) so the failure says *what* is left over.

How a step is proven (the method is recorded with the step and printed in the document):

* ``d.eq`` — symbolic. ``lhs − rhs`` is reduced to 0 by, in order: structural equality; logarithms expanded
  (only where sympy's assumptions allow, i.e. for positive arguments) and every remaining ``log(·)``, undefined
  function value ``f(·)`` and derivative ``f′(·)`` replaced by a fresh symbol, then the expression is put over a
  common denominator and the expanded numerator must be the zero polynomial (if the rational function in those
  symbols is identically 0, so is the original, whatever the atoms' values: a sound, sufficient test); finally
  ``sympy.simplify``. Vectors/matrices are checked entry by entry.
* ``d.eq_exact`` — exact arithmetic at concrete rational points, with a stated reason why a symbolic proof is not
  used (e.g. a tail probability of a binomial with symbolic G).
* ``d.eq_numeric`` — floating point (or mpmath at a stated precision) with a stated tolerance and reason; used only
  for comparisons against float64 library code, printed tables and Monte Carlo.
* ``d.ne`` — a counterexample: the residual is shown to be non-zero at a concrete point (exactly, or by a
  high-precision evaluation whose error is far below the margin).
* ``d.assume`` — an assumption the derivation relies on, checked explicitly (a sympy relation that must evaluate
  to True, or a Python bool).

Nothing else is needed: ``python -m rlkl derive`` runs every registered identity, ``--latex FILE`` renders the
recorded steps as a Markdown document with ``$…$`` math.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterable

import sympy as sp

__all__ = [
    "Identity", "Derivation", "Step", "Result", "StepFailed", "SkipIdentity", "identity", "REGISTRY",
    "prove_zero", "residual", "run_identity", "grad", "vsum", "sg_freeze", "tex", "generic_function", "Softmax",
]


class StepFailed(AssertionError):
    """A step of a derivation does not hold; ``residual`` is the simplified lhs − rhs."""

    def __init__(self, label: str, residual_text: str, method: str = ""):
        self.label = label
        self.residual_text = residual_text
        self.method = method
        super().__init__(f"step '{label}' does not hold: residual = {residual_text}")


class SkipIdentity(Exception):
    """The identity cannot run here (e.g. an optional library part is missing)."""


@dataclass
class Step:
    label: str
    method: str           # "symbolic (…)", "exact rational", "numeric (…)", "assumption", "counterexample", "text"
    tex: str = ""         # display math for the document (paper symbols)
    concrete: str = ""    # LaTeX of the concrete checked instance, when short
    note: str = ""        # reason / extra words
    ok: bool = True


@dataclass
class Identity:
    """One registered claim: ``claim`` in words, ``source`` (paper + equation / spec section)."""

    name: str
    claim: str
    source: str
    func: Callable[["Derivation"], None]
    module: str
    slow: bool = False
    order: int = 0


@dataclass
class Result:
    identity: Identity
    status: str                      # PASS / FAIL / SKIP
    seconds: float
    detail: str = ""
    steps: list[Step] = field(default_factory=list)


REGISTRY: dict[str, Identity] = {}
_counter = [0]


def identity(claim: str, source: str, *, slow: bool = False, name: str | None = None):
    """Register ``func(d: Derivation)`` as an executable identity.

    Args:
      claim: the statement, in words (one line; printed by ``rlkl derive``).
      source: paper and equation (e.g. "RPG arXiv 2505.17508, Prop. 3.2") or spec section.
      slow: excluded from ``rlkl verify --quick``.
      name: registry key; defaults to ``module.function``.
    """

    def deco(func):
        key = name or f"{func.__module__.split('.')[-1]}.{func.__name__}"
        _counter[0] += 1
        REGISTRY[key] = Identity(key, claim, source, func, func.__module__, slow, _counter[0])
        func.identity_key = key
        return func

    return deco


# ----------------------------------------------------------------------------------------------------------------
# zero testing


def _is_function_atom(a) -> bool:
    return (isinstance(a, (sp.Subs, sp.Derivative, sp.core.function.AppliedUndef))
            or getattr(type(a), "_rlkl_atom", False))


def _atomize(expr: sp.Expr, logs: bool = True) -> sp.Expr:
    """Replace log(·) (if ``logs``), undefined-function values f(·) and their derivatives by fresh symbols
    (structurally equal atoms share a symbol)."""
    atoms = set()
    for a in sp.preorder_traversal(expr):
        if (logs and isinstance(a, sp.log)) or _is_function_atom(a):
            atoms.add(a)
    if not atoms:
        return expr
    # replace outermost atoms first (an atom may contain another)
    ordered = sorted(atoms, key=lambda a: -sp.count_ops(a))
    mapping = {a: sp.Dummy(f"A{i}") for i, a in enumerate(ordered)}
    return expr.xreplace(mapping)


def _zero_scalar(expr, relations: dict | None = None) -> tuple[bool, str, sp.Expr]:
    expr = sp.sympify(expr)
    if expr == 0:
        return True, "structural", expr
    try:
        e = _atomize(expr, logs=False)  # f(·), f′(·) first, so their arguments are never rewritten
        e = sp.expand_log(e)  # only where the arguments are known positive (sound)
        e = _atomize(e)
        if relations:
            e = e.xreplace(relations)
        num, _den = sp.fraction(sp.together(e))
        if sp.expand(num) == 0:
            return True, "rational (logs/f-values as atoms)", sp.Integer(0)
    except (sp.PolynomialError, TypeError, ValueError, NotImplementedError, ZeroDivisionError):
        pass
    if relations:
        expr = expr.xreplace(relations)
    s = sp.simplify(expr)
    if s == 0:
        return True, "simplify", s
    s2 = sp.simplify(sp.expand_log(sp.expand(s)))
    if s2 == 0:
        return True, "simplify", s2
    return False, "", s2


def prove_zero(expr, relations: dict | None = None) -> tuple[bool, str, object]:
    """Try to prove ``expr`` ≡ 0 symbolically. Returns (ok, method, simplified residual).

    ``expr`` may be a scalar, a sympy Matrix or a list/tuple of scalars; all entries must vanish.
    ``relations`` (symbol -> expression, e.g. ``{n: 1 - p}`` for π(0|s) = 1 − π(1|s)) are substituted into the
    rational part after logarithms and function values have been turned into atoms: the atoms keep their own
    arguments (``log n`` stays ``log n``), while every other occurrence obeys the relation. This is sound
    because the relation holds for the actual values.
    """
    if isinstance(expr, (list, tuple)):
        expr = sp.Matrix(expr)
    if isinstance(expr, sp.MatrixBase):
        methods = set()
        res = []
        all_ok = True
        for entry in expr:
            ok, m, r = _zero_scalar(entry, relations)
            all_ok &= ok
            if ok and m:
                methods.add(m)
            res.append(r)
        method = ", ".join(sorted(methods))
        return all_ok, method, sp.Matrix(expr.shape[0], expr.shape[1], res)
    return _zero_scalar(expr, relations)


def _as_sym(x):
    if isinstance(x, (list, tuple)):
        return sp.Matrix(x)
    return x if isinstance(x, sp.MatrixBase) else sp.sympify(x)


def residual(lhs, rhs):
    """lhs − rhs (entrywise for vectors), unsimplified."""
    lhs, rhs = _as_sym(lhs), _as_sym(rhs)
    if isinstance(lhs, sp.MatrixBase) or isinstance(rhs, sp.MatrixBase):
        if not (isinstance(lhs, sp.MatrixBase) and isinstance(rhs, sp.MatrixBase)) or lhs.shape != rhs.shape:
            raise StepFailed("shape", f"lhs and rhs have different shapes: {getattr(lhs, 'shape', ())} vs "
                                      f"{getattr(rhs, 'shape', ())}")
    return lhs - rhs


def _short(expr, limit: int = 400) -> str:
    s = str(expr)
    return s if len(s) <= limit else s[:limit] + f" … ({len(s)} chars)"


def tex(expr, limit: int = 260) -> str:
    """LaTeX of ``expr`` if short enough to be readable, else ''."""
    try:
        s = sp.latex(expr)
    except Exception:  # pragma: no cover - latex printer gaps
        return ""
    return s if len(s) <= limit else ""


# ----------------------------------------------------------------------------------------------------------------
# calculus helpers shared by the modules


def grad(expr, params: Iterable[sp.Symbol], log_params: bool = False):
    """Gradient column vector of ``expr`` w.r.t. ``params``.

    With ``log_params=True`` each parameter x is the exponential of a logit, x = e^θ, and the derivative returned
    is ∂/∂θ = x ∂/∂x (so policies can be written as rational functions of positive symbols x).
    """
    params = list(params)
    expr = _as_sym(expr)
    if isinstance(expr, sp.MatrixBase):
        raise TypeError("grad expects a scalar expression")
    return sp.Matrix([(x * sp.diff(expr, x)) if log_params else sp.diff(expr, x) for x in params])


class Softmax:
    """A softmax distribution over ``n`` actions written through its probabilities.

    ``probs[a]`` are positive symbols p_a with the relation p_n = 1 − Σ_{a<n} p_a (imposed by the zero test, see
    :func:`prove_zero`); the gradient w.r.t. the logits θ uses the softmax Jacobian ∂p_b/∂θ_a = p_b(δ_ab − p_a):

        ∇_{θ_a} F(p) = p_a (∂F/∂p_a − Σ_b p_b ∂F/∂p_b).

    Writing policies through probabilities keeps every expression polynomial in the p's (the zero test is then
    fast); :meth:`check_jacobian` proves the Jacobian from the logit form once per derivation.
    """

    def __init__(self, name: str, n: int = 3):
        self.name = name
        self.n = n
        self.probs = list(sp.symbols(f"{name}1:{n + 1}", positive=True))
        self.relations = {self.probs[-1]: 1 - sum(self.probs[:-1])}

    def grad(self, expr):
        d = [sp.diff(expr, pb) for pb in self.probs]
        mean = sum(pb * db for pb, db in zip(self.probs, d))
        return sp.Matrix([pa * (da - mean) for pa, da in zip(self.probs, d)])

    def check_jacobian(self, d: "Derivation"):
        """Prove ∂softmax(θ)_b/∂θ_a = p_b(δ_ab − p_a) with θ symbolic (x_a = e^{θ_a} > 0)."""
        xs = sp.symbols(f"x1:{self.n + 1}", positive=True)
        soft = [x / sum(xs) for x in xs]
        jac = sp.Matrix(self.n, self.n, lambda a, b: xs[a] * sp.diff(soft[b], xs[a]))
        target = sp.Matrix(self.n, self.n, lambda a, b: soft[b] * ((1 if a == b else 0) - soft[a]))
        d.eq(jac, target, "softmax Jacobian ∂π_b/∂θ_a = π_b(δ_ab − π_a) (justifies writing π through its probabilities)",
             tex_=r"\frac{\partial\pi_b}{\partial\theta_a} = \pi_b(\delta_{ab}-\pi_a)\ \Rightarrow\ "
                  r"\nabla_{\theta_a}F(\pi) = \pi_a\Big(\frac{\partial F}{\partial\pi_a}-\sum_b\pi_b"
                  r"\frac{\partial F}{\partial\pi_b}\Big)", show_concrete=False)


def generic_function(name: str = "f"):
    """An arbitrary differentiable scalar function f with derivative f′, as two sympy function classes.

    ``f(arg).diff(x)`` gives ``f′(arg)·arg.diff(x)`` (no Subs/Dummy objects), and both are treated as opaque atoms by
    :func:`prove_zero`, so an identity proven with them holds for *every* differentiable f.
    """
    fprime = type(f"{name}_prime", (sp.Function,), {"_rlkl_atom": True,
                                                    "_latex": lambda self, printer: f"{name}'\\left({printer._print(self.args[0])}\\right)"})

    def fdiff(self, argindex=1):
        return fprime(self.args[0])

    f = type(name, (sp.Function,), {"_rlkl_atom": True, "fdiff": fdiff})
    return f, fprime


def vsum(items) -> sp.Matrix:
    """Sum of a non-empty iterable of equally shaped sympy matrices (``sum`` starts from the int 0)."""
    items = list(items)
    if not items:
        raise ValueError("vsum of an empty sequence")
    total = items[0]
    for it in items[1:]:
        total = total + it
    return total


def sg_freeze(params: Iterable[sp.Symbol]) -> tuple[dict, dict]:
    """Stop-gradient helper: returns (freeze, thaw) substitution maps to frozen copies of ``params``.

    ``expr.xreplace(freeze)`` is sg[expr]: the same value, but built from symbols the gradient does not see;
    after differentiating, ``.xreplace(thaw)`` puts the live symbols back.
    """
    params = list(params)
    frozen = [sp.Symbol(f"{p.name}_sg", **p.assumptions0) for p in params]
    return dict(zip(params, frozen)), dict(zip(frozen, params))


# ----------------------------------------------------------------------------------------------------------------
# the recording object


class Derivation:
    """Records (and immediately checks) the steps of one identity; see the module docstring."""

    def __init__(self, ident: Identity | None = None):
        self.identity = ident
        self.steps: list[Step] = []
        self.relations: dict = {}   # symbol -> expression constraints used by the zero test (see prove_zero)

    # prose ----------------------------------------------------------------------------------------------------
    def text(self, markdown: str) -> None:
        """A paragraph of prose (Markdown with $…$ math) for the generated document."""
        self.steps.append(Step(label="", method="text", note=markdown))

    # checks ---------------------------------------------------------------------------------------------------
    def eq(self, lhs, rhs, label: str, *, tex_: str = "", show_concrete: bool = True):
        """Assert lhs ≡ rhs symbolically (see module docstring); returns ``rhs`` so chains read naturally."""
        r = residual(lhs, rhs)
        ok, method, res = prove_zero(r, self.relations)
        concrete = ""
        if show_concrete:
            lt, rt = tex(lhs), tex(rhs)
            if lt and rt:
                concrete = f"{lt} = {rt}"
        step = Step(label=label, method=f"symbolic: {method}" if ok else "symbolic", tex=tex_, concrete=concrete,
                    ok=ok)
        self.steps.append(step)
        if not ok:
            raise StepFailed(label, _short(res), "symbolic")
        return rhs

    def eq_exact(self, lhs, rhs, label: str, *, points: list[dict], reason: str, tex_: str = ""):
        """Assert lhs = rhs exactly at each concrete point (a dict of symbol -> exact number)."""
        if not reason:
            raise ValueError("eq_exact needs a stated reason for not proving the step symbolically")
        worst = None
        for pt in points:
            r = residual(lhs, rhs)
            r = r.xreplace({k: sp.nsimplify(v) if not isinstance(v, sp.Basic) else v for k, v in pt.items()})
            ok, _, res = prove_zero(r, self.relations)
            if not ok:
                worst = (pt, res)
                break
        step = Step(label=label, method=f"exact arithmetic at {len(points)} point(s)", tex=tex_, note=reason,
                    ok=worst is None)
        self.steps.append(step)
        if worst is not None:
            raise StepFailed(label, f"{_short(worst[1])} at {worst[0]}", "exact")
        return rhs

    def eq_numeric(self, lhs: float, rhs: float, label: str, *, rtol: float = 0.0, atol: float = 0.0, reason: str,
                   tex_: str = ""):
        """Assert |lhs − rhs| <= atol + rtol·|rhs| in floating point; ``reason`` says why floats are adequate."""
        if not reason:
            raise ValueError("eq_numeric needs a stated reason")
        lhs_f, rhs_f = float(lhs), float(rhs)
        diff = abs(lhs_f - rhs_f)
        bound = atol + rtol * abs(rhs_f)
        ok = diff <= bound
        step = Step(label=label, method=f"numeric (|Δ| ≤ {bound:.3g})", tex=tex_, note=reason, ok=ok,
                    concrete=f"{lhs_f:.12g} \\approx {rhs_f:.12g}")
        self.steps.append(step)
        if not ok:
            raise StepFailed(label, f"{lhs_f!r} - {rhs_f!r} = {lhs_f - rhs_f:.3e} (allowed {bound:.3e})", "numeric")
        return rhs

    def ne(self, lhs, rhs, label: str, *, at: dict, reason: str = "", tex_: str = "", digits: int = 30):
        """Assert lhs ≠ rhs by a counterexample: the residual at the concrete point ``at`` is non-zero.

        The residual is evaluated with ``digits`` significant digits (mpmath); it must exceed 10^(−digits/2) in
        absolute value, far above the evaluation error, so the conclusion is exact.
        """
        r = residual(lhs, rhs)
        if self.relations:
            r = r.xreplace(self.relations)
        r = r.xreplace({k: sp.nsimplify(v) if not isinstance(v, sp.Basic) else v for k, v in at.items()})
        entries = list(r) if isinstance(r, sp.MatrixBase) else [r]
        vals = [sp.N(e, digits) for e in entries]
        mags = [abs(complex(v)) for v in vals]
        biggest = max(mags) if mags else 0.0
        ok = biggest > 10 ** (-digits / 2)
        step = Step(label=label, method="counterexample", tex=tex_, ok=ok,
                    note=(reason + " " if reason else "") + f"(largest |residual| = {biggest:.6g} at {at})")
        self.steps.append(step)
        if not ok:
            raise StepFailed(label, f"residual vanishes at {at} (claimed non-zero)", "counterexample")
        return biggest

    def assume(self, condition, label: str, *, tex_: str = ""):
        """An assumption the derivation relies on, checked explicitly (sympy relation → must be True)."""
        val = condition
        if isinstance(condition, sp.Basic) and condition not in (sp.true, sp.false):
            val = sp.simplify(condition)
        ok = val is True or val is sp.true
        self.steps.append(Step(label=label, method="assumption", tex=tex_, ok=ok))
        if not ok:
            raise StepFailed(label, f"assumption does not hold: {_short(condition)} -> {val}", "assumption")


# ----------------------------------------------------------------------------------------------------------------
# running


def run_identity(ident: Identity) -> Result:
    """Run one identity, timing it; never raises (a bug in the derivation is reported as FAIL)."""
    d = Derivation(ident)
    t0 = time.perf_counter()
    try:
        ident.func(d)
        status, detail = "PASS", f"{sum(1 for s in d.steps if s.method not in ('text',))} steps"
    except StepFailed as exc:
        status, detail = "FAIL", str(exc)
    except SkipIdentity as exc:
        status, detail = "SKIP", str(exc)
    except Exception as exc:  # a broken derivation is a failed derivation
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        status, detail = "FAIL", f"error: {tb}"
    seconds = time.perf_counter() - t0
    return Result(ident, status, seconds, detail, d.steps)


def as_record(res: Result) -> dict:
    """JSON record of a result: ``claim``, ``source``, ``status``, ``seconds`` (+ name, module, detail)."""
    return {
        "name": res.identity.name,
        "module": res.identity.module,
        "claim": res.identity.claim,
        "source": res.identity.source,
        "status": res.status,
        "seconds": round(res.seconds, 4),
        "detail": res.detail,
        "steps": [dataclasses.asdict(s) for s in res.steps],  # prose steps have method "text"
    }
