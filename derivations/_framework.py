"""A tiny registry of executable derivations.

An *identity* is a function decorated with :func:`identity`; it receives a :class:`Derivation` and walks through
the written derivation one step at a time, calling ``d.eq(lhs, rhs, label)`` for every ``=`` sign. Each step is
checked the moment it is recorded; the first step that does not hold raises :class:`StepFailed`, which carries the
residual ``lhs − rhs`` (after simplification) so the failure says *what* is left over.

Every identity declares its **kind**, and the run checks that the recorded steps live up to it:

* ``symbolic-general`` (the default) — the claim is proven at the generality it is stated in: a categorical
  distribution with a *symbolic* number of outcomes ``n`` (``IndexedBase`` + ``Sum``), a symbolic group size ``G``,
  any horizon ``T`` (an induction step T → T+1 proven as a symbolic identity), an undefined function ``f``, any
  parametrization of the policy (gradients are directional derivatives along an arbitrary parameter direction,
  see :func:`vary`). Only ``d.eq`` and ``d.assume`` steps are allowed.
* ``symbolic-instance (sizes)`` — symbolic, but on stated finite sizes (``instance="G = 2, 3"``); ``d.eq_exact``
  (exact arithmetic at rational points) is allowed too.
* ``numeric (tolerance)`` — at least one floating-point comparison (library float64 code, Monte Carlo).
* ``counterexample`` — the claim is a "≠": shown by a non-zero residual at a concrete point (``d.ne``).

How a symbolic step is proven (the method is recorded with the step and printed in the document):

* ``d.eq`` — ``lhs − rhs`` is reduced to 0 by, in order: structural equality; **sums** put in a canonical form
  (summation index renamed by nesting depth, summand expanded into monomials, index-free factors pulled out, sums
  whose ranges differ by integer offsets aligned by splitting off the boundary terms — valid for every range under
  Karr's convention ∑_a^b = −∑_{b+1}^{a−1}, which sympy uses); relations such as ``Σ_a π_a = 1`` applied to the
  canonical sums; then logarithms expanded (only where sympy's assumptions allow, i.e. positive arguments) and
  every remaining ``log(·)``, undefined-function value ``f(·)``, derivative ``f′(·)`` and canonical sum replaced
  by a fresh symbol, and the numerator over a common denominator must be the zero polynomial (zero for all values
  of the atoms implies zero for the actual ones: a sound, sufficient test). If that fails, the terms linear in one
  sum are merged per range into a single sum whose summand must vanish (Σ 0 = 0), recursively. Last resorts:
  ``gammasimp`` (binomials, factorials) and ``sympy.simplify``. Vectors/matrices are checked entry by entry.
* ``d.eq_exact`` — exact arithmetic at concrete rational points, with a stated reason.
* ``d.eq_numeric`` — floating point with a stated tolerance and reason.
* ``d.ne`` — a counterexample: the residual is non-zero at a concrete point (30-digit evaluation, margin far above
  the evaluation error).
* ``d.assume`` — an assumption the derivation relies on, checked explicitly (a sympy relation that must evaluate
  to True, or a Python bool).

``python -m rlkl derive`` runs every registered identity, ``--latex FILE`` renders the recorded steps as a
Markdown document with ``$…$`` math.
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
    "prove_zero", "residual", "run_identity", "as_record", "canonical_sums", "vary", "vary2", "grad", "vsum",
    "sg_freeze", "tex", "generic_function", "GENERAL", "INSTANCE", "NUMERIC", "COUNTEREXAMPLE",
]

GENERAL = "symbolic-general"
INSTANCE = "symbolic-instance"
NUMERIC = "numeric"
COUNTEREXAMPLE = "counterexample"
KINDS = (GENERAL, INSTANCE, NUMERIC, COUNTEREXAMPLE)

# which step methods each kind may record ("text" is always allowed)
_ALLOWED = {
    GENERAL: {"symbolic", "assumption"},
    INSTANCE: {"symbolic", "assumption", "exact"},
    NUMERIC: {"symbolic", "assumption", "exact", "numeric", "counterexample"},
    COUNTEREXAMPLE: {"symbolic", "assumption", "counterexample"},
}
_REQUIRED = {GENERAL: "symbolic", INSTANCE: None, NUMERIC: "numeric", COUNTEREXAMPLE: "counterexample"}


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
    method: str           # "symbolic: …", "exact arithmetic …", "numeric (…)", "assumption", "counterexample", "text"
    tex: str = ""         # display math for the document (paper symbols)
    concrete: str = ""    # LaTeX of the concrete checked instance, when short
    note: str = ""        # reason / extra words
    ok: bool = True
    category: str = ""    # "symbolic" | "exact" | "numeric" | "counterexample" | "assumption" | "text"
    tolerance: str = ""   # numeric steps: the stated tolerance


@dataclass
class Identity:
    """One registered claim: ``claim`` in words, ``source`` (paper + equation), its declared ``category``
    (one of :data:`KINDS`) and, for instances, the ``sizes`` it is checked on."""

    name: str
    claim: str
    source: str
    func: Callable[["Derivation"], None]
    module: str
    slow: bool = False
    order: int = 0
    category: str = GENERAL
    sizes: str = ""

    @property
    def declared_kind(self) -> str:
        return f"{INSTANCE} ({self.sizes})" if self.category == INSTANCE else self.category


@dataclass
class Result:
    identity: Identity
    status: str                      # PASS / FAIL / SKIP
    seconds: float
    detail: str = ""
    steps: list[Step] = field(default_factory=list)
    kind: str = ""


REGISTRY: dict[str, Identity] = {}
_counter = [0]


def identity(claim: str, source: str, *, slow: bool = False, name: str | None = None, instance: str | None = None,
             numeric: bool = False, counterexample: bool = False):
    """Register ``func(d: Derivation)`` as an executable identity.

    Args:
      claim: the statement, in words (one line; printed by ``rlkl derive``).
      source: paper and equation (e.g. "RPG arXiv 2505.17508, Prop. 3.2").
      slow: excluded from ``rlkl derive --quick`` / ``rlkl verify`` quick mode.
      name: registry key; defaults to ``module.function``.
      instance: the finite sizes of a ``symbolic-instance`` check (e.g. "G = 2, 3; 3 responses").
      numeric: a ``numeric`` check (floating-point comparisons with stated tolerances).
      counterexample: a ``counterexample`` (the claim is that two expressions differ).
    Without ``instance``/``numeric``/``counterexample`` the identity is ``symbolic-general``.
    """
    if sum(bool(x) for x in (instance, numeric, counterexample)) > 1:
        raise ValueError("an identity has one kind: give at most one of instance=, numeric=, counterexample=")
    category = INSTANCE if instance else NUMERIC if numeric else COUNTEREXAMPLE if counterexample else GENERAL

    def deco(func):
        key = name or f"{func.__module__.split('.')[-1]}.{func.__name__}"
        _counter[0] += 1
        REGISTRY[key] = Identity(key, claim, source, func, func.__module__, slow, _counter[0], category,
                                 instance or "")
        func.identity_key = key
        return func

    return deco


# ----------------------------------------------------------------------------------------------------------------
# sums in canonical form


def _sum_height(e) -> int:
    """Nesting depth of Sums in ``e`` (0 if none)."""
    if isinstance(e, sp.Sum):
        return 1 + _sum_height(e.function)
    return max((_sum_height(a) for a in e.args), default=0) if isinstance(e, sp.Basic) else 0


def _canon_one(s: sp.Sum, binary=frozenset()) -> sp.Expr:
    """One Sum (inner sums already canonical) → Σ_m c_m · Sum(monomial_m, (k_h, lo, hi)) with index-free c_m; the
    index of a sum whose summand has nesting depth h − 1 is the symbol ``_k{h}`` (so alpha-equivalent sums are
    structurally equal)."""
    f = s.function
    limits = list(s.limits)
    if len(limits) > 1:  # Sum(f, l1, l2) = Sum(Sum(f, l1), l2)
        inner = _canon_one(sp.Sum(f, limits[0]), binary)
        return canonical_sums(sp.Sum(inner, *limits[1:]), binary)
    i, lo, hi = limits[0]
    tmp = sp.Dummy("k", integer=True)
    f = _reduce_binary(sp.expand(sp.expand_log(f.xreplace({i: tmp}))), binary)
    out = sp.Integer(0)
    for t in sp.Add.make_args(sp.expand(f)):
        c, dep = t.as_independent(tmp, as_Add=False)
        if dep == 1:
            out += c * (hi - lo + 1)
        else:
            k = sp.Symbol(f"_k{1 + _sum_height(dep)}", integer=True)
            out += c * sp.Sum(dep.xreplace({tmp: k}), (k, lo, hi))
    return out


def _split_int(x):
    c, rest = sp.sympify(x).as_coeff_Add()
    return (rest, int(c)) if c.is_Integer else (sp.sympify(x), 0)


def _split_boundary(f, k, lsym, hsym, a, b, a_new, b_new):
    """Σ_{k=L+a}^{H+b} f − Σ_{k=L+a_new}^{H+b_new} f for a ≤ a_new, b_new ≤ b: the terms k = L+a … L+a_new−1 and
    H+b_new+1 … H+b, evaluated inside the wider range (Karr's convention makes the split valid for every range)."""
    out = sum((f.xreplace({k: lsym + m}) for m in range(a, a_new)), sp.Integer(0))
    return out + sum((f.xreplace({k: hsym + m}) for m in range(b_new + 1, b + 1)), sp.Integer(0))


def _align_ranges(expr: sp.Expr) -> sp.Expr:
    """Sums with the same summand whose limits differ by integer offsets: each is rewritten as the sum over the
    narrowest of their ranges plus its own boundary terms."""
    groups: dict = {}
    for s in expr.atoms(sp.Sum):
        (k, lo, hi), = s.limits
        (lsym, lint), (hsym, hint) = _split_int(lo), _split_int(hi)
        groups.setdefault((s.function, k, lsym, hsym), []).append((s, lint, hint))
    mapping = {}
    for (f, k, lsym, hsym), members in groups.items():
        if len({(a, b) for _, a, b in members}) < 2:
            continue
        a_new = max(a for _, a, _ in members)
        b_new = min(b for _, _, b in members)
        ref = sp.Sum(f, (k, lsym + a_new, hsym + b_new))
        for s, a, b in members:
            mapping[s] = ref + _split_boundary(f, k, lsym, hsym, a, b, a_new, b_new)
    return expr.xreplace(mapping) if mapping else expr


def canonical_sums(expr, binary: Iterable = (), shift: bool = False) -> sp.Expr:
    """Every Sum in ``expr`` in canonical form (see the module docstring); ``binary`` bases/symbols b obey b² = b.

    ``shift=True`` also changes every summation variable so that the lower limit has integer offset 0 (so a sum
    re-indexed by ``Sum.change_index`` compares equal to the original)."""
    expr = _reduce_binary(sp.sympify(expr), binary)
    if not expr.has(sp.Sum):
        return expr
    binary = frozenset(binary)
    canon = lambda e: e.replace(lambda x: isinstance(x, sp.Sum), lambda x: _canon_one(x, binary))  # noqa: E731
    out = _align_ranges(canon(expr))                                                                # bottom-up
    for _ in range(3 if shift else 0):
        new = _align_ranges(canon(_shift_to_zero(out)))
        if new == out:
            break
        out = new
    return out


def _shift_to_zero(expr: sp.Expr) -> sp.Expr:
    """Σ_{k=L+a}^{H} f(k) = Σ_{k=L}^{H−a} f(k + a): every sum's lower limit gets integer offset 0 (a change of the
    summation variable, valid for every range)."""
    mapping = {}
    for s in expr.atoms(sp.Sum):
        (k, lo, hi), = s.limits
        lsym, a = _split_int(lo)
        if a != 0:
            mapping[s] = sp.Sum(s.function.xreplace({k: k + a}), (k, lsym, hi - a))
    return expr.xreplace(mapping) if mapping else expr


def _reduce_binary(expr, binary):
    binary = set(binary)
    if not binary:
        return expr

    def is_bin(b):
        return b in binary or (isinstance(b, sp.Indexed) and b.base in binary)

    return expr.replace(lambda e: isinstance(e, sp.Pow) and is_bin(e.base) and e.exp.is_Integer and e.exp > 0,
                        lambda e: e.base)


# ----------------------------------------------------------------------------------------------------------------
# zero testing


_SIMPLIFY_MAX_OPS = 150
_COMB = (sp.binomial, sp.factorial, sp.gamma, sp.FallingFactorial, sp.RisingFactorial)


def _is_function_atom(a) -> bool:
    return (isinstance(a, (sp.Subs, sp.Derivative, sp.core.function.AppliedUndef))
            or getattr(type(a), "_rlkl_atom", False))


def _atomize(expr: sp.Expr, logs: bool = True, sums: bool = True):
    """Replace Sums (if ``sums``), log(·) (if ``logs``), undefined-function values f(·) and their derivatives by fresh
    symbols (structurally equal atoms share one). Returns (expression, {symbol: atom})."""
    atoms = set()
    for a in sp.preorder_traversal(expr):
        if (sums and isinstance(a, sp.Sum)) or (logs and isinstance(a, sp.log)) or _is_function_atom(a):
            atoms.add(a)
    if not atoms:
        return expr, {}
    ordered = sorted(atoms, key=lambda a: -sp.count_ops(a))   # outermost first (an atom may contain another)
    mapping = {a: sp.Dummy(f"A{i}") for i, a in enumerate(ordered)}
    return expr.xreplace(mapping), {v: k for k, v in mapping.items()}


@dataclass
class _Ctx:
    relations: dict          # Symbol/Indexed -> expr (applied after atomization)
    sum_relations: dict      # canonical Sum -> expr (applied after canonicalization)
    binary: frozenset
    depth: int = 0


def _offset_atoms(e, pick, rebuild):
    """Atoms x(base + c) with the same symbolic ``base`` and integer offsets c: x(base + c) → rebuild(c − c_min)·X
    with X a fresh symbol standing for x(base + c_min). ``pick(a)`` returns (group key, base, c) or None."""
    groups: dict = {}
    for a in sp.preorder_traversal(e):
        got = pick(a)
        if got is not None:
            groups.setdefault(got[0], []).append((a, got[1], got[2]))
    mapping, rev = {}, {}
    for key, members in groups.items():
        c_min = min(c for _, _, c in members)
        X = sp.Dummy("X")
        rev[X] = rebuild(key, members[0][1], c_min, None)
        for a, base, c in members:
            mapping[a] = rebuild(key, base, c_min, c) * X
    return (e.xreplace(mapping), rev) if mapping else (e, {})


def _pick_pow(a):
    """b**(E + c) with a non-numeric exponent E, integer c, and b > 0 or an integer exponent (b^(m+n) = b^m b^n)."""
    if not isinstance(a, sp.Pow) or a.exp.is_Number:
        return None
    base_exp, c = _split_int(a.exp)
    if not (a.base.is_positive or a.exp.is_integer):
        return None
    return (a.base, base_exp), base_exp, c


def _rebuild_pow(key, base_exp, c_min, c):
    b = key[0]
    return sp.Pow(b, base_exp + c_min) if c is None else b ** (c - c_min)


def _pick_factorial(a):
    if not isinstance(a, sp.factorial) or a.args[0].is_Number:
        return None
    base, c = _split_int(a.args[0])
    return (base,), base, c


def _rebuild_factorial(key, base, c_min, c):
    if c is None:
        return sp.factorial(base + c_min)
    return sp.Mul(*[base + j for j in range(c_min + 1, c + 1)])   # (base+c)! = (base+c_min)!·Π_{j=c_min+1}^{c}(base+j)


def _normalize_offsets(e):
    """Binomials as factorials; powers b^(E+c) and factorials (F+c)! with integer offsets c written as a rational
    factor times one atom per (b, E) or F, so that sums of such terms can cancel in the rational test."""
    if e.has(sp.binomial, sp.FallingFactorial, sp.RisingFactorial):
        e = sp.expand_func(e).rewrite(sp.factorial)
    e, rev1 = _offset_atoms(e, _pick_factorial, _rebuild_factorial)
    e, rev2 = _offset_atoms(e, _pick_pow, _rebuild_pow)
    return e, {**rev1, **rev2}


def _rational_zero(e, ctx: _Ctx):
    """(is zero, numerator, reverse atom map) for the rational test with logs, f-values and sums as atoms."""
    e, rev1 = _atomize(e, logs=False)   # f(·), f′(·), sums first, so their arguments are never rewritten
    e = sp.expand_log(e)                # only where the arguments are known positive (sound)
    e, rev2 = _atomize(e)
    if e.has(sp.Pow, sp.binomial, sp.factorial, sp.FallingFactorial, sp.RisingFactorial):
        e, rev3 = _normalize_offsets(e)
        rev2 = {**rev2, **rev3}
    if ctx.relations:
        e = e.xreplace(ctx.relations)
    num, _den = sp.fraction(sp.together(e))
    num = sp.expand(num)
    return num == 0, num, {**rev1, **rev2}


def _unatomize(e, rev):
    for _ in range(3):  # atoms may contain atoms
        new = e.xreplace(rev)
        if new == e:
            break
        e = new
    return e


def _merge_linear_sums(num, rev, ctx: _Ctx) -> bool:
    """Numerator terms linear in exactly one sum: sums whose limits differ by integer offsets are cut to their
    narrowest common range (the cut-off terms join the rest), merged into one summand per range that must vanish;
    the rest must vanish too; terms with products of sums must have cancelled already."""
    sum_syms = {s for s, a in rev.items() if isinstance(a, sp.Sum)}
    linear = []
    rest = sp.Integer(0)
    for term in sp.Add.make_args(num):
        present = [s for s in sum_syms if term.has(s)]
        if not present:
            rest += _unatomize(term, rev)
            continue
        if len(present) > 1:
            return False
        coeff = sp.cancel(term / present[0])
        if coeff.has(present[0]):
            return False
        linear.append((_unatomize(coeff, rev), rev[present[0]]))
    groups: dict = {}
    for coeff, atom in linear:
        (k, lo, hi), = atom.limits
        (lsym, a), (hsym, b) = _split_int(lo), _split_int(hi)
        groups.setdefault((lsym, hsym), []).append((coeff, atom.function, k, a, b))
    sub = dataclasses.replace(ctx, depth=ctx.depth + 1)
    for (lsym, hsym), members in groups.items():
        a_new = max(m[3] for m in members)
        b_new = min(m[4] for m in members)
        j = sp.Dummy("j", integer=True)
        summand = sp.Integer(0)
        for coeff, f, k, a, b in members:
            summand += coeff * f.xreplace({k: j})
            rest += coeff * _split_boundary(f, k, lsym, hsym, a, b, a_new, b_new)
        if not _zero_scalar(summand, sub)[0]:
            return False
    return rest == 0 or _zero_scalar(rest, sub)[0]


def _zero_sums(expr, ctx: _Ctx) -> str:
    """The sum-aware tests (several canonical forms); returns the method that proved expr ≡ 0, or ''."""
    variants = [(False, True), (True, True)] if ctx.sum_relations else [(False, False), (True, False)]
    if ctx.sum_relations:
        variants += [(False, False), (True, False)]
    for shift, use_rel in variants:
        try:
            e = canonical_sums(expr, ctx.binary, shift)
            if use_rel:
                e = sp.sympify(e.xreplace(ctx.sum_relations))
            ok, num, rev = _rational_zero(e, ctx)
            if ok:
                return "rational (logs/f-values/sums as atoms)"
            if ctx.depth < 4 and any(isinstance(a, sp.Sum) for a in rev.values()) and _merge_linear_sums(num, rev, ctx):
                return "sums merged per range, summands rational"
        except (sp.PolynomialError, TypeError, ValueError, NotImplementedError, ZeroDivisionError, RecursionError):
            continue
    return ""


def _zero_scalar(expr, ctx: _Ctx) -> tuple[bool, str, sp.Expr]:
    expr = sp.sympify(expr)
    if expr == 0:
        return True, "structural", expr
    e = expr
    if e.has(sp.Sum) or ctx.binary:
        method = _zero_sums(e, ctx)
        if method:
            return True, method, sp.Integer(0)
        e = canonical_sums(e, ctx.binary)
        if ctx.sum_relations:
            e = sp.sympify(e.xreplace(ctx.sum_relations))
    else:
        try:
            if _rational_zero(e, ctx)[0]:
                return True, "rational (logs/f-values as atoms)", sp.Integer(0)
        except (sp.PolynomialError, TypeError, ValueError, NotImplementedError, ZeroDivisionError, RecursionError):
            pass
    if ctx.relations:
        e = e.xreplace(ctx.relations)
    if ctx.depth > 0 or e.has(sp.Sum) or sp.count_ops(e) > _SIMPLIFY_MAX_OPS:
        return False, "", e     # inside a merge the rational test is all we try; sums are ours; big ones are slow
    if e.has(*_COMB):
        g = sp.gammasimp(sp.expand_func(e).rewrite(sp.gamma))
        if g == 0 or sp.simplify(g) == 0:
            return True, "gammasimp", sp.Integer(0)
    s = sp.simplify(e)
    if s == 0:
        return True, "simplify", s
    s2 = sp.simplify(sp.expand_log(sp.expand(s)))
    if s2 == 0:
        return True, "simplify", s2
    return False, "", s2


def _split_relations(relations: dict | None, binary) -> _Ctx:
    plain, sums = {}, {}
    for key, val in (relations or {}).items():
        if isinstance(key, sp.Sum):
            can = canonical_sums(key, binary)   # c·Sum(monomial): the relation is on the canonical sum itself
            coeff, atom = can.as_independent(sp.Sum, as_Add=False)
            if not isinstance(atom, sp.Sum):
                raise ValueError(f"a sum relation must be one canonical sum times a factor, got {can}")
            sums[atom] = sp.sympify(val) / coeff
        else:
            plain[key] = sp.sympify(val)
    return _Ctx(plain, sums, frozenset(binary or ()))


def prove_zero(expr, relations: dict | None = None, binary: Iterable = ()) -> tuple[bool, str, object]:
    """Try to prove ``expr`` ≡ 0 symbolically. Returns (ok, method, simplified residual).

    ``expr`` may be a scalar, a sympy Matrix or a list/tuple of scalars; all entries must vanish.
    ``relations``: symbol -> expression (e.g. ``{n: 1 - p}`` for π(0|s) = 1 − π(1|s)), substituted into the rational
    part after logarithms and function values have been turned into atoms (the atoms keep their own arguments:
    ``log n`` stays ``log n``, every other occurrence obeys the relation; sound because the relation holds for the
    actual values); and Sum -> value (e.g. ``Σ_a π_a = 1``, ``Σ_a dπ_a = 0``), applied to the canonical sums.
    ``binary``: IndexedBases or symbols whose values are 0 or 1 (so b² = b).
    """
    ctx = _split_relations(relations, binary)
    if isinstance(expr, (list, tuple)):
        expr = sp.Matrix(expr)
    if isinstance(expr, sp.MatrixBase):
        methods = set()
        res = []
        all_ok = True
        for entry in expr:
            ok, m, r = _zero_scalar(entry, ctx)
            all_ok &= ok
            if ok and m:
                methods.add(m)
            res.append(r)
        return all_ok, ", ".join(sorted(methods)), sp.Matrix(expr.shape[0], expr.shape[1], res)
    return _zero_scalar(expr, ctx)


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


def _perturb(expr, variations: dict, t):
    """expr with every varied quantity x replaced by x + t·dx (IndexedBase keys vary every entry x[i])."""
    bases = {k: v for k, v in variations.items() if isinstance(k, sp.IndexedBase)}
    others = {k: k + t * v for k, v in variations.items() if not isinstance(k, sp.IndexedBase)}
    if bases:
        expr = expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base in bases,
                            lambda e: e + t * bases[e.base][e.indices])
    return expr.xreplace(others) if others else expr


def vary(expr, variations: dict):
    """Directional derivative ∂expr: every x in ``variations`` moves to first order as x + t·dx; returns d/dt at 0.

    Keys are symbols (value: the variation dx, any expression) or IndexedBases (value: the IndexedBase of the
    variations, x[i] → x[i] + t·dx[i] inside and outside sums). With dπ_a = ∂π_a/∂θ_k for one coordinate θ_k of an
    arbitrary parametrization, ∂F is the k-th component of ∇_θF; an identity proven for free dπ (subject only to
    the constraints of the policy class, e.g. Σ_a dπ_a = 0 for a normalized π) holds for every parametrization
    (softmax, neural network, shared parameters) and every component.
    """
    t = sp.Dummy("t")
    out = sp.diff(_perturb(_as_sym(expr), variations, t), t)
    return out.xreplace({t: 0})


def vary2(expr, first: dict, second: dict, mixed: dict):
    """Mixed second directional derivative ∂_u∂_v expr: x → x + s·u_x + t·v_x + s·t·w_x, d²/ds dt at 0.

    ``first``/``second``/``mixed`` map each varied IndexedBase (or symbol) to its u, v and w = ∂_u∂_v x.
    """
    s, t = sp.Dummy("s"), sp.Dummy("t")
    keys = set(first) | set(second) | set(mixed)
    zero = sp.Integer(0)
    bases = {k for k in keys if isinstance(k, sp.IndexedBase)}
    e = _as_sym(expr)
    if bases:
        def rep(x):
            out = x
            for coef, table in ((s, first), (t, second), (s * t, mixed)):
                if x.base in table:
                    out = out + coef * table[x.base][x.indices]
            return out
        e = e.replace(lambda x: isinstance(x, sp.Indexed) and x.base in bases, rep)
    others = {k: k + s * first.get(k, zero) + t * second.get(k, zero) + s * t * mixed.get(k, zero)
              for k in keys if not isinstance(k, sp.IndexedBase)}
    if others:
        e = e.xreplace(others)
    return sp.diff(e, s, t).xreplace({s: 0, t: 0})


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


def generic_function(name: str = "f"):
    """An arbitrary differentiable scalar function f with derivative f′, as two sympy function classes.

    ``f(arg).diff(x)`` gives ``f′(arg)·arg.diff(x)`` (no Subs/Dummy objects), and both are treated as opaque atoms by
    :func:`prove_zero`, so an identity proven with them holds for *every* differentiable f.
    """
    fprime = type(f"{name}_prime", (sp.Function,), {
        "_rlkl_atom": True,
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


def sg_freeze(params: Iterable) -> tuple[dict, dict]:
    """Stop-gradient helper: returns (freeze, thaw) substitution maps to frozen copies of ``params``.

    ``expr.xreplace(freeze)`` is sg[expr]: the same value, but built from symbols (or IndexedBases) the derivative
    does not see; after differentiating, ``.xreplace(thaw)`` puts the live ones back.
    """
    params = list(params)
    frozen = []
    for p in params:
        if isinstance(p, sp.IndexedBase):
            frozen.append(sp.IndexedBase(f"{p.name}_sg", **p.assumptions0))
        else:
            frozen.append(sp.Symbol(f"{p.name}_sg", **p.assumptions0))
    return dict(zip(params, frozen)), dict(zip(frozen, params))


# ----------------------------------------------------------------------------------------------------------------
# the recording object


class Derivation:
    """Records (and immediately checks) the steps of one identity; see the module docstring."""

    def __init__(self, ident: Identity | None = None):
        self.identity = ident
        self.steps: list[Step] = []
        self.relations: dict = {}   # symbol -> expr and Sum -> value constraints used by the zero test
        self.binary: set = set()    # IndexedBases/symbols with values in {0, 1}

    # prose ----------------------------------------------------------------------------------------------------
    def text(self, markdown: str) -> None:
        """A paragraph of prose (Markdown with $…$ math) for the generated document."""
        self.steps.append(Step(label="", method="text", note=markdown, category="text"))

    # checks ---------------------------------------------------------------------------------------------------
    def eq(self, lhs, rhs, label: str, *, tex_: str = "", show_concrete: bool = True):
        """Assert lhs ≡ rhs symbolically (see module docstring); returns ``rhs`` so chains read naturally."""
        r = residual(lhs, rhs)
        ok, method, res = prove_zero(r, self.relations, self.binary)
        concrete = ""
        if show_concrete:
            lt, rt = tex(lhs), tex(rhs)
            if lt and rt:
                concrete = f"{lt} = {rt}"
        step = Step(label=label, method=f"symbolic: {method}" if ok else "symbolic", tex=tex_, concrete=concrete,
                    ok=ok, category="symbolic")
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
            ok, _, res = prove_zero(r, self.relations, self.binary)
            if not ok:
                worst = (pt, res)
                break
        step = Step(label=label, method=f"exact arithmetic at {len(points)} point(s)", tex=tex_, note=reason,
                    ok=worst is None, category="exact")
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
        tol = " + ".join(x for x in (f"{atol:.0e}" if atol else "", f"{rtol:.0e}·|rhs|" if rtol else "") if x)
        step = Step(label=label, method=f"numeric (|Δ| ≤ {bound:.3g})", tex=tex_, note=reason, ok=ok,
                    concrete=f"{lhs_f:.12g} \\approx {rhs_f:.12g}", category="numeric", tolerance=tol or "0")
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
            r = r.xreplace({k: v for k, v in self.relations.items() if not isinstance(k, sp.Sum)})
        r = r.xreplace({k: sp.nsimplify(v) if not isinstance(v, sp.Basic) else v for k, v in at.items()})
        entries = list(r) if isinstance(r, sp.MatrixBase) else [r]
        vals = [sp.N(e, digits) for e in entries]
        mags = [abs(complex(v)) for v in vals]
        biggest = max(mags) if mags else 0.0
        ok = biggest > 10 ** (-digits / 2)
        step = Step(label=label, method="counterexample", tex=tex_, ok=ok, category="counterexample",
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
        self.steps.append(Step(label=label, method="assumption", tex=tex_, ok=ok, category="assumption"))
        if not ok:
            raise StepFailed(label, f"assumption does not hold: {_short(condition)} -> {val}", "assumption")


# ----------------------------------------------------------------------------------------------------------------
# running


def _kind_of(ident: Identity, steps: list[Step]) -> tuple[str, str]:
    """(kind string, '' or the reason the recorded steps do not match the declared kind)."""
    cats = [s.category for s in steps if s.category != "text"]
    allowed = _ALLOWED[ident.category]
    bad = [s for s in steps if s.category != "text" and s.category not in allowed]
    if bad:
        return ident.declared_kind, (f"kind mismatch: declared {ident.declared_kind} but step '{bad[0].label}' is "
                                     f"{bad[0].category}")
    need = _REQUIRED[ident.category]
    if not cats or (need and need not in cats):
        return ident.declared_kind, f"kind mismatch: declared {ident.declared_kind} but no {need or 'checked'} step"
    if ident.category == NUMERIC:
        tols = sorted({s.tolerance for s in steps if s.category == "numeric"})
        return f"{NUMERIC} ({'; '.join(tols)})", ""
    return ident.declared_kind, ""


def run_identity(ident: Identity) -> Result:
    """Run one identity, timing it; never raises (a bug in the derivation is reported as FAIL)."""
    d = Derivation(ident)
    t0 = time.perf_counter()
    try:
        ident.func(d)
        status, detail = "PASS", f"{sum(1 for s in d.steps if s.category != 'text')} steps"
    except StepFailed as exc:
        status, detail = "FAIL", str(exc)
    except SkipIdentity as exc:
        status, detail = "SKIP", str(exc)
    except Exception as exc:  # a broken derivation is a failed derivation
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        status, detail = "FAIL", f"error: {tb}"
    kind, mismatch = _kind_of(ident, d.steps)
    if status == "PASS" and mismatch:
        status, detail = "FAIL", mismatch
    seconds = time.perf_counter() - t0
    return Result(ident, status, seconds, detail, d.steps, kind if status != "SKIP" else ident.declared_kind)


def as_record(res: Result) -> dict:
    """JSON record of a result: ``claim``, ``source``, ``kind``, ``status``, ``seconds`` (+ name, module, detail)."""
    return {
        "name": res.identity.name,
        "module": res.identity.module,
        "claim": res.identity.claim,
        "source": res.identity.source,
        "kind": res.kind or res.identity.declared_kind,
        "status": res.status,
        "seconds": round(res.seconds, 4),
        "detail": res.detail,
        "steps": [dataclasses.asdict(s) for s in res.steps],  # prose steps have method "text"
    }


class Categorical:
    """Outcomes a = 1, …, n of a categorical distribution with a *symbolic* number of outcomes n.

    Distributions and per-outcome quantities are IndexedBases (``self.base("p")`` is p[a] > 0); expectations are
    ``Sum``s over a. ``normalized(p)`` is the relation Σ_a p_a = 1 and ``tangent(dp)`` the relation Σ_a dp_a = 0
    satisfied by the variations of a normalized distribution (for :meth:`Derivation.eq`'s zero test).
    """

    def __init__(self, n: str = "n", index: str = "a"):
        self.n = sp.Symbol(n, integer=True, positive=True)
        self.a = sp.Symbol(index, integer=True)

    def base(self, name: str, positive: bool = True) -> sp.IndexedBase:
        return sp.IndexedBase(name, positive=True) if positive else sp.IndexedBase(name, real=True)

    def sum(self, f) -> sp.Sum:
        """Σ_{a=1}^n f(a) for a callable ``f`` of the index (or an expression in ``self.a``)."""
        body = f(self.a) if callable(f) else f
        return sp.Sum(body, (self.a, 1, self.n))

    def expect(self, p: sp.IndexedBase, f) -> sp.Sum:
        """E_{a∼p}[f(a)] = Σ_a p_a f(a) (the sum Σ_a p_a(·) also when p is not normalized)."""
        return self.sum(lambda a: p[a] * (f(a) if callable(f) else f))

    def normalized(self, p: sp.IndexedBase) -> dict:
        return {self.sum(lambda a: p[a]): sp.Integer(1)}

    def tangent(self, dp: sp.IndexedBase) -> dict:
        return {self.sum(lambda a: dp[a]): sp.Integer(0)}

    def at(self, expr, n_value: int, values: dict):
        """``expr`` on a concrete instance: n = ``n_value`` outcomes and ``values[base]`` the list of entries
        (1-based index a ↦ ``values[base][a − 1]``); for counterexamples."""
        e = _as_sym(expr).xreplace({self.n: n_value}).doit()

        def entry(x):
            if x.base in values and len(x.indices) == 1 and x.indices[0].is_Integer:
                return sp.sympify(values[x.base][int(x.indices[0]) - 1])
            return x

        return e.replace(lambda x: isinstance(x, sp.Indexed) and x.base in values, entry)
