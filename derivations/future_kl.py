"""Future KL: the gradient of a token-wise f-regularizer (and of the sequence-level KL) for any horizon T.

Setting (FRPO arXiv 2601.10201 Thm 4.1, Cor. 4.2, Eq. 4.5–4.6; Tang & Munos arXiv 2506.09477 §4): an
autoregressive policy; at every prefix (state) s the next token a is one of n (n symbolic), π(a|s) with *any*
differentiable parametrization (parameters may be shared across states; ∂ is the derivative along one arbitrary
parameter direction, dπ(a|s) free with Σ_a dπ(a|s) = 0), a fixed reference π_ref(a|s), r = π/π_ref at the sampled
token and g = ∂log π(a|s). The token-wise f-regularizer of the remaining T steps from s is

    V_T(s) = E_{y∼π(·|s)}[Σ_{t=1}^{T} f(r_t)/r_t] = Σ_{s'} d_π(s'|s) D_f(π(·|s')‖π_ref(·|s')),

with f an *undefined* function (any differentiable f). The claims are proven for every T by induction on the tree:
the trajectory sums satisfy one-step (Bellman) recursions — proven by peeling off the first step with symbolic T —
and the step T → T+1 of each gradient identity is a symbolic identity at one state with n actions, the children's
values and gradients entering as free symbols (the induction hypothesis). Explicit trees of depth 2 and 3 are kept as
labelled instances and for counterexamples.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import sympy as sp

from ._framework import Categorical, Derivation, SkipIdentity, generic_function, identity, vary, vsum

F, FP = generic_function("f")
CAT = Categorical("n", "a")
PI = CAT.base("pi")                       # π(a|s)
DPI = CAT.base("dpi", positive=False)     # ∂π(a|s)
Q = CAT.base("q")                         # π_ref(a|s)
V = CAT.base("V", positive=False)         # V_T(s·a): the child's value (regularizer of the remaining T steps)
DV = CAT.base("dV", positive=False)       # ∂V_T(s·a)
H = CAT.base("H", positive=False)         # H_T(s·a): the child's claimed gradient (induction hypothesis ∂V = H)
VAR = {PI: DPI, V: DV}
RELATIONS = {**CAT.normalized(PI), **CAT.normalized(Q), **CAT.tangent(DPI)}

T = sp.Symbol("T", integer=True, positive=True)
t, j = sp.Symbol("t", integer=True), sp.Symbol("j", integer=True)
GT, FT, CT = sp.IndexedBase("g"), sp.IndexedBase("fprime"), sp.IndexedBase("c")   # per-step g_t, f′(r_t), f(r_t)/r_t


def ratio(a):
    return PI[a] / Q[a]


def cost(a):
    """f(r)/r, the per-token sampled estimate of D_f at the state (E_{a∼π}[f(r)/r] = Σ_a π_ref f(π/π_ref))."""
    return F(ratio(a)) / ratio(a)


def score(a):
    return DPI[a] / PI[a]


def claimed_gradient_body(tt, hi):
    """g_t (f′(r_t) + Σ_{j=t+1}^{hi} f(r_j)/r_j): the term of the claimed gradient at step t (FRPO Thm 4.1)."""
    return GT[tt] * (FT[tt] + sp.Sum(CT[j], (j, tt + 1, hi)))


def _peeling_lemma(d: Derivation, body, what: str):
    """Σ_{t=1}^{T+1} body(t) = body(1) + Σ_{t=1}^{T} body(t+1) for the trajectory sums (symbolic T)."""
    lhs = sp.Sum(body(t, T + 1), (t, 1, T + 1))
    peeled = body(1, T + 1) + sp.Sum(body(t, T + 1), (t, 2, T + 1))
    d.eq(lhs, peeled, f"{what}: peel off t = 1 (symbolic horizon T + 1)", show_concrete=False)
    sub = sp.Sum(body(t, T + 1), (t, 2, T + 1)).change_index(t, t - 1, t)
    d.eq(sp.Sum(body(t, T + 1), (t, 2, T + 1)), sub, f"{what}: the rest is the same sum over the sub-trajectory's "
         "T steps (index t − 1)", show_concrete=False)


@identity("Token-wise f-divergence, any horizon T, any differentiable f, any vocabulary size and parametrization: "
          "∇V_T = E[Σ_t g_t (f′(r_t) + Σ_{j>t} f(r_j)/r_j)] (induction on T)",
          "FRPO arXiv 2601.10201 Thm 4.1; Tang & Munos arXiv 2506.09477 §4")
def f_divergence_gradient(d: Derivation):
    d.relations.update(RELATIONS)
    d.text("$f$ is an *undefined* function: $f(r)$ and $f'(r)$ are opaque symbols in the check, so every step holds "
           "for every differentiable $f$. **Lemma (one-step recursions).** Per trajectory, peeling off the first step:")
    _peeling_lemma(d, claimed_gradient_body, "claimed gradient")
    d.text("Taking $\\mathbb E_{a_1}\\mathbb E_{y'\\mid s a_1}$: the future costs of the first step average to the "
           "child's value $V_T(s a_1)$ and the rest is the child's claimed gradient, so the claimed gradient "
           "$H_T$ and the value satisfy $H_{T+1}(s)=\\sum_a\\pi(a|s)\\,[g_a(f'(r_a)+V_T(sa))+H_T(sa)]$ and "
           "$V_{T+1}(s)=\\sum_a\\pi(a|s)\\,[f(r_a)/r_a+V_T(sa)]$, with $V_0=H_0=0$.")
    a = CAT.a
    d.eq(vary(cost(a), VAR), (FP(ratio(a)) - cost(a)) * score(a),
         "pathwise part: ∇(f(r)/r) = (f′(r) − f(r)/r)·∇log π  (∇r = r∇log π)",
         tex_="\\nabla\\frac{f(r)}{r} = \\Big(f'(r)-\\frac{f(r)}{r}\\Big)\\nabla\\log\\pi", show_concrete=False)
    v_next = CAT.expect(PI, lambda a: cost(a) + V[a])
    h_next = CAT.expect(PI, lambda a: score(a) * (FP(ratio(a)) + V[a]) + H[a])
    d.eq(vary(CAT.expect(PI, cost), VAR), CAT.expect(PI, lambda a: score(a) * FP(ratio(a))),
         "base T = 1: ∇V_1(s) = E_a[g_a f′(r_a)] = H_1(s)", show_concrete=False)
    grad_v = vary(v_next, VAR)
    d.eq(grad_v, CAT.sum(lambda a: DPI[a] * (cost(a) + V[a]) + PI[a] * (vary(cost(a), VAR) + DV[a])),
         "∇V_{T+1}(s) = Σ_a [∇π(a|s)(f(r_a)/r_a + V_T(sa)) + π(a|s)(∇(f(r_a)/r_a) + ∇V_T(sa))]", show_concrete=False)
    d.eq(grad_v.xreplace({DV: H}), h_next,
         "induction step T → T+1: with ∇V_T(sa) = H_T(sa) for every child, ∇V_{T+1}(s) = H_{T+1}(s)",
         tex_="\\nabla V_{T+1}(s)=\\sum_a\\pi\\big[g_a\\big(\\tfrac{f(r_a)}{r_a}+V_T\\big)+\\big(f'(r_a)-\\tfrac{f(r_a)}"
              "{r_a}\\big)g_a+H_T\\big] = \\sum_a\\pi\\big[g_a(f'(r_a)+V_T)+H_T\\big]=H_{T+1}(s)", show_concrete=False)
    d.text("By induction $\\nabla V_T=H_T$ for every $T$ and every state; at the root "
           "$\\nabla R=\\mathbb E\\big[\\sum_t\\nabla\\log\\pi(a_t|s_t)\\big(f'(r_t)+\\sum_{j>t}f(r_j)/r_j\\big)\\big]$.")


def inclusive_body(tt, hi):
    """g_t Σ_{j=t}^{hi} δ_j: the k1 reward-to-go coefficient (inclusive)."""
    return GT[tt] * sp.Sum(CT[j], (j, tt, hi))


@identity("Sequence-level reverse KL, any T: KL(π(y)‖π_ref(y)) = E[Σ_t δ_t] and ∇KL = E[Σ_t ∇log π_t Σ_{t'≥t} δ_t'] "
          "(k1 reward-to-go; induction on T)",
          "Tang & Munos arXiv 2506.09477 §4; FRPO arXiv 2601.10201 Cor. 4.2, Eq. 4.5")
def sequence_kl_gradient(d: Derivation):
    d.relations.update(RELATIONS)
    a = CAT.a
    delta = sp.log(PI[a]) - sp.log(Q[a])
    sub = Categorical("M", "y")                      # the sub-trajectories y' after (s, a): M of them, M symbolic
    rho, rho_ref = sub.base("rho"), sub.base("rho_ref")
    d.relations.update(sub.normalized(rho))
    d.text("**Chain rule.** A trajectory $(a, y')$ has $\\pi(ay'|s)=\\pi(a|s)\\,\\pi(y'|sa)$, so its log-ratio is "
           "$\\delta_a$ plus the sub-trajectory's; averaging over $y'$ (any $M$ sub-trajectories):")
    y = sub.a
    d.eq(sp.log(PI[a] * rho[y] / (Q[a] * rho_ref[y])), delta + sp.log(rho[y] / rho_ref[y]),
         "log(π/π_ref)(a y′) = δ_a + log(π/π_ref)(y′)", show_concrete=False)
    d.eq(sub.expect(rho, lambda y: delta + sp.log(rho[y] / rho_ref[y])),
         delta + sub.expect(rho, lambda y: sp.log(rho[y] / rho_ref[y])), "E_{y′}[δ_a + L(y′)] = δ_a + KL_T(sa)",
         show_concrete=False)
    d.text("so $\\mathrm{KL}_{T+1}(s)=\\sum_a\\pi(a|s)[\\delta_a+\\mathrm{KL}_T(sa)]$: the sequence KL is the "
           "token-wise regularizer with $f(r)/r=\\delta$, i.e. $f(r)=r\\log r$. Its gradient, by the same induction "
           "(children: value $V_T(sa)=\\mathrm{KL}_T(sa)$, claimed gradient $H_T(sa)=\\mathbb E[\\sum_t g_t\\sum_{j\\ge t}"
           "\\delta_j]$):")
    _peeling_lemma(d, inclusive_body, "k1 reward-to-go")
    kl_next = CAT.expect(PI, lambda a: sp.log(PI[a]) - sp.log(Q[a]) + V[a])
    h_next = CAT.expect(PI, lambda a: score(a) * (sp.log(PI[a]) - sp.log(Q[a]) + V[a]) + H[a])
    d.eq(vary(kl_next, VAR).xreplace({DV: H}), h_next,
         "induction step T → T+1: ∇KL_{T+1}(s) = Σ_a π[g_a(δ_a + KL_T(sa)) + H_T(sa)] (E_a[∇δ_a] = Σ_a ∇π = 0)",
         tex_="\\nabla\\mathrm{KL}_{T+1}(s) = \\sum_a\\big[\\nabla\\pi\\,(\\delta_a+\\mathrm{KL}_T)+\\pi\\,\\nabla\\delta_a"
              "+\\pi H_T\\big] = \\sum_a\\pi\\big[g_a(\\delta_a+\\mathrm{KL}_T)+H_T\\big]", show_concrete=False)
    d.eq(vary(CAT.expect(PI, lambda a: sp.log(PI[a]) - sp.log(Q[a])), VAR),
         CAT.expect(PI, lambda a: score(a) * (sp.log(PI[a]) - sp.log(Q[a]))), "base T = 1: ∇KL_1 = E_a[g δ]",
         show_concrete=False)
    d.text("Equivalently, from the general $f$ result with $f(r)=r\\log r$: $f'(r_t)=\\delta_t+1$, and the $+1$ drops "
           "because $\\mathbb E[\\sum_t g_t]=0$ for every $T$ (induction: $Z_{T+1}(s)=\\sum_a\\pi(g_a+Z_T(sa))$):")
    d.eq(CAT.expect(PI, score), 0, "Z_{T+1}(s) = Σ_a π(a|s)(g_a + Z_T(sa)) = Σ_a ∇π(a|s) + 0 = 0 (Z_T = 0)",
         show_concrete=False)


@identity("Local part E[Σ_t g_t δ_t] = Σ_s sg(d_π(s))∇KL_s (what token-sum k2 as a loss gives); future part "
          "E[Σ_t g_t Σ_{t'>t} δ_t'] = Σ_s ∇d_π(s)·KL_s; local + future = ∇KL_seq — any T (induction)",
          "FRPO arXiv 2601.10201 Prop. 4.3; Tang & Munos arXiv 2506.09477 §4")
def local_and_future(d: Derivation):
    d.relations.update(RELATIONS)
    a = CAT.a
    delta = lambda a: sp.log(PI[a]) - sp.log(Q[a])  # noqa: E731
    loc, lam = CAT.base("loc", positive=False), CAT.base("Lambda", positive=False)
    fut, phi = CAT.base("fut", positive=False), CAT.base("Phi", positive=False)
    kl_s = CAT.expect(PI, delta)
    d.text("With $d_\\pi(s'|s)=\\pi(a|s)\\,d_\\pi(s'|sa)$ for $s'$ below $sa$: "
           "$\\Lambda_{T+1}(s)=\\nabla_{\\rm sg}\\mathrm{KL}_s+\\sum_a\\pi(a|s)\\Lambda_T(sa)$ (the reach probabilities "
           "are frozen) and $\\Phi_{T+1}(s)=\\sum_a[\\nabla\\pi(a|s)\\,\\mathrm{KL}_T(sa)+\\pi(a|s)\\Phi_T(sa)]$ "
           "(using $\\mathrm{KL}_T(sa)=\\sum_{s''}d_\\pi(s''|sa)\\mathrm{KL}_{s''}$, the chain rule). "
           "The trajectory sums peel like the claimed gradient above:")
    _peeling_lemma(d, lambda tt, hi: GT[tt] * CT[tt], "local E[Σ_t g_t δ_t]")
    _peeling_lemma(d, lambda tt, hi: GT[tt] * sp.Sum(CT[j], (j, tt + 1, hi)), "future E[Σ_t g_t Σ_{j>t} δ_j]")
    local_next = CAT.expect(PI, lambda a: score(a) * delta(a) + loc[a])
    lam_next = vary(kl_s, VAR) + CAT.expect(PI, lambda a: lam[a])
    d.eq(local_next.xreplace({loc: lam}), lam_next, "local, step T → T+1: Σ_a π(g_a δ_a + Λ_T(sa)) = ∇KL_s + "
         "Σ_a π Λ_T(sa)  (Σ_a π ∇δ_a = 0)", show_concrete=False,
         tex_="\\mathbb E\\Big[\\sum_t g_t\\,\\delta_t\\Big] = \\sum_s \\mathrm{sg}(d_\\pi(s))\\,"
              "\\nabla\\mathrm{KL}\\big(\\pi(\\cdot|s)\\|\\pi_{\\rm ref}(\\cdot|s)\\big)")
    d.eq(vary(delta(a) ** 2 / 2, VAR), delta(a) * score(a), "per token: ∇(δ²/2) = δ·∇log π, so token-sum k2 as a "
         "loss has expected gradient E[Σ_t g_t δ_t] (the local part)", show_concrete=False)
    fut_next = CAT.expect(PI, lambda a: score(a) * V[a] + fut[a])
    phi_next = CAT.sum(lambda a: DPI[a] * V[a] + PI[a] * phi[a])
    d.eq(fut_next.xreplace({fut: phi}), phi_next, "future, step T → T+1: Σ_a π(g_a KL_T(sa) + Φ_T(sa)) = "
         "Σ_a [∇π KL_T(sa) + π Φ_T(sa)]", show_concrete=False,
         tex_="\\mathbb E\\Big[\\sum_t g_t\\sum_{t'>t}\\delta_{t'}\\Big] = \\sum_s \\nabla d_\\pi(s)\\;"
              "\\mathrm{KL}\\big(\\pi(\\cdot|s)\\|\\pi_{\\rm ref}(\\cdot|s)\\big)")
    d.eq(local_next + fut_next, CAT.expect(PI, lambda a: score(a) * (delta(a) + V[a]) + loc[a] + fut[a]),
         "local + future: δ_t + Σ_{j>t} δ_j = Σ_{j≥t} δ_j, the k1 reward-to-go of sequence_kl_gradient, = ∇KL_seq",
         tex_="\\nabla\\mathrm{KL}_{\\rm seq} = \\underbrace{\\textstyle\\sum_s d_\\pi(s)\\nabla\\mathrm{KL}_s}_{\\rm local}"
              " + \\underbrace{\\textstyle\\sum_s \\nabla d_\\pi(s)\\,\\mathrm{KL}_s}_{\\rm future}", show_concrete=False)


@identity("Perspective form and specialisations: φ(u) − uφ′(u) = f′(r), φ(u) = f(r)/r; reverse KL → inclusive "
          "k1 reward-to-go (+1), reverse-KL 'k3' → local δ_t and future k3_j",
          "FRPO arXiv 2601.10201 Thm 4.1, Cor. 4.2, Eq. 4.5–4.6")
def f_specialisations(d: Derivation):
    u = sp.Symbol("u", positive=True)
    rr = sp.Symbol("r", positive=True)
    phi = u * F(1 / u)
    d.eq(phi - u * sp.diff(phi, u), FP(1 / u), "φ(u) − uφ′(u) = f′(1/u) = f′(r)",
         tex_="\\varphi(u)=u f(1/u):\\quad \\varphi(u)-u\\varphi'(u) = f'(r),\\quad \\varphi(u) = \\frac{f(r)}{r},\\quad r=1/u")
    d.eq(phi, F(1 / u) / (1 / u), "φ(u) = f(r)/r")
    f_rev = rr * sp.log(rr)
    d.eq(sp.diff(f_rev, rr), sp.log(rr) + 1, "reverse KL f = r log r: f′(r) = log r + 1 = δ + 1")
    d.eq(f_rev / rr, sp.log(rr), "… and f(r)/r = δ: coefficient δ_t + 1 + Σ_{j>t} δ_j (the +1 has zero mean)",
         tex_="f(r)=r\\log r:\\quad f'(r_t)+\\sum_{j>t}\\frac{f(r_j)}{r_j} = 1+\\sum_{j\\ge t}\\delta_j")
    f_k3 = rr * sp.log(rr) - rr + 1
    d.eq(sp.diff(f_k3, rr), sp.log(rr), "reverse-KL 'k3' f = r log r − r + 1: local term f′(r) = δ")
    d.eq(f_k3 / rr, sp.log(rr) + 1 / rr - 1, "… future value f(r)/r = δ + e^{−δ} − 1 = k3",
         tex_="f(r)=r\\log r-r+1:\\quad f'(r_t)=\\delta_t,\\quad \\frac{f(r_j)}{r_j}=\\delta_j+e^{-\\delta_j}-1=k_{3,j}")


# ---------------------------------------------------------------------------------------------------------------
# explicit trees (instances and counterexamples)


class Tree:
    """All prefixes of a depth-T binary tree with symbolic per-state probabilities for π and π_ref.

    π(1|s) = p_s = σ(θ_s) and π(0|s) = n_s = 1 − p_s; the gradient w.r.t. the logit θ_s is the operator
    p_s n_s (∂/∂p_s − ∂/∂n_s) (because dp/dθ = p(1−p)); n_s = 1 − p_s is imposed by the zero test (``relations``),
    so expressions stay polynomial in the probabilities. Likewise π_ref(1|s) = q_s, π_ref(0|s) = m_s = 1 − q_s.
    """

    def __init__(self, T: int):
        self.T = T
        self.states = [s for t in range(T) for s in itertools.product((0, 1), repeat=t)]
        name = lambda s: "".join(map(str, s)) or "o"  # noqa: E731
        self.p = {s: sp.Symbol(f"p_{name(s)}", positive=True) for s in self.states}
        self.n = {s: sp.Symbol(f"n_{name(s)}", positive=True) for s in self.states}
        self.q = {s: sp.Symbol(f"q_{name(s)}", positive=True) for s in self.states}
        self.m = {s: sp.Symbol(f"m_{name(s)}", positive=True) for s in self.states}
        self.params = [self.p[s] for s in self.states]
        self.relations = {**{self.n[s]: 1 - self.p[s] for s in self.states},
                          **{self.m[s]: 1 - self.q[s] for s in self.states}}
        self.seqs = list(itertools.product((0, 1), repeat=T))

    def pi(self, a, s):
        return self.p[s] if a == 1 else self.n[s]

    def ref(self, a, s):
        return self.q[s] if a == 1 else self.m[s]

    def steps(self, seq):
        return [(tuple(seq[:t]), seq[t]) for t in range(self.T)]

    def prob(self, seq):
        return sp.Mul(*[self.pi(a, s) for s, a in self.steps(seq)])

    def delta(self, s, a):
        return sp.log(self.pi(a, s)) - sp.log(self.ref(a, s))

    def g(self, expr):
        """∇_θ: component s is p_s n_s (∂/∂p_s − ∂/∂n_s) (chain rule through the sigmoid)."""
        return sp.Matrix([self.p[s] * self.n[s] * (sp.diff(expr, self.p[s]) - sp.diff(expr, self.n[s]))
                          for s in self.states])

    def kl_seq(self):
        return sum(self.prob(y) * (sp.log(self.prob(y)) - sp.log(sp.Mul(*[self.ref(a, s) for s, a in self.steps(y)])))
                   for y in self.seqs)

    def expect(self, per_seq):
        return vsum(self.prob(y) * per_seq(y) for y in self.seqs)


@lru_cache(maxsize=None)
def tree(T: int) -> Tree:
    return Tree(T)


def _tree_chain(d: Derivation, T: int):
    tr = tree(T)
    d.relations.update(tr.relations)
    score = lambda s, a: tr.g(sp.log(tr.pi(a, s)))  # noqa: E731
    r = lambda s, a: tr.pi(a, s) / tr.ref(a, s)  # noqa: E731
    incl = tr.expect(lambda y: vsum(score(s, a) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[k:])
                                    for k, (s, a) in enumerate(tr.steps(y))))
    d.eq(tr.g(tr.kl_seq()), incl, f"T={T}: ∇KL_seq = E[Σ_t g_t Σ_{{t'≥t}} δ_t'] on the explicit tree",
         show_concrete=False)
    reg = sum(tr.prob(y) * sum(F(r(s, a)) / r(s, a) for s, a in tr.steps(y)) for y in tr.seqs)
    i6 = tr.expect(lambda y: vsum(score(s, a) * (FP(r(s, a)) + sum(F(r(s2, a2)) / r(s2, a2)
                                                                   for s2, a2 in tr.steps(y)[k + 1:]))
                                  for k, (s, a) in enumerate(tr.steps(y))))
    d.eq(tr.g(reg), i6, f"T={T}: ∇R = E[Σ_t g_t (f′(r_t) + Σ_{{j>t}} f(r_j)/r_j)] on the explicit tree (any f)",
         show_concrete=False)


@identity("Explicit binary trees: ∇KL_seq and ∇R (any f) by brute force over all sequences equal the claimed "
          "gradients (an independent check of the induction)", "FRPO arXiv 2601.10201 Thm 4.1",
          instance="T = 2; binary vocabulary, tabular logits")
def tree_instance(d: Derivation):
    _tree_chain(d, 2)


@identity("Explicit binary trees, T = 3 (as tree_instance)", "FRPO arXiv 2601.10201 Thm 4.1", slow=True,
          instance="T = 3; binary vocabulary, tabular logits")
def tree_instance_t3(d: Derivation):
    _tree_chain(d, 3)


@identity("The future part is not zero (local-only KL losses miss it), and the inclusive reward-to-go PLUS a local "
          "k2 loss double-counts the local gradient", "FRPO arXiv 2601.10201 Prop. 4.3", counterexample=True)
def future_counterexamples(d: Derivation):
    tr = tree(2)
    d.relations.update(tr.relations)
    score = lambda s, a: tr.g(sp.log(tr.pi(a, s)))  # noqa: E731
    zero = sp.zeros(len(tr.params), 1)
    future = tr.expect(lambda y: vsum(score(s, a) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[k + 1:])
                                      for k, (s, a) in enumerate(tr.steps(y))))
    incl = tr.expect(lambda y: vsum(score(s, a) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[k:])
                                    for k, (s, a) in enumerate(tr.steps(y))))
    k2 = tr.expect(lambda y: vsum(tr.g(tr.delta(s, a) ** 2 / 2) for s, a in tr.steps(y)))
    pt = {**{tr.p[s]: sp.Rational(1, i + 2) for i, s in enumerate(tr.states)},
          **{tr.q[s]: sp.Rational(i + 1, i + 3) for i, s in enumerate(tr.states)}}
    why = "T = 2, π(1|s) = 1/2, 1/3, 1/4; π_ref(1|s) = 1/3, 2/4, 3/5 in state order"
    d.ne(future, zero, "E[Σ_t g_t Σ_{t'>t} δ_t'] ≠ 0", at=pt, reason=why)
    d.ne(incl + k2, tr.g(tr.kl_seq()), "inclusive Σ_{t'≥t} in the advantage + a local k2 loss ≠ ∇KL_seq", at=pt,
         reason=why)


# ---------------------------------------------------------------------------------------------------------------
# the library

_R = sp.Symbol("u", positive=True)
#: f(u) for rlkl.divergences' named f-divergences (total variation has no derivative at u = 1 and is left out)
SYMPY_F = {
    "reverse_kl": _R * sp.log(_R),
    "forward_kl": -sp.log(_R),
    "reverse_kl_k3": _R * sp.log(_R) - _R + 1,
    "forward_kl_k3": -sp.log(_R) + _R - 1,
    "pearson": (_R - 1) ** 2,
    "neyman": (_R - 1) ** 2 / _R,
    "hellinger": (sp.sqrt(_R) - 1) ** 2,
    "jensen_shannon": (_R * sp.log(_R) - (_R + 1) * sp.log((_R + 1) / 2)) / 2,
    "alpha=0.5": (_R ** sp.Rational(1, 2) - _R / 2 - sp.Rational(1, 2)) / (sp.Rational(1, 2) * (-sp.Rational(1, 2))),
}
_LOG_U = (-2.5, -0.75, 0.0, 0.125, 1.5, -0.03125)   # exactly representable log-ratios of one response


@identity("rlkl.advantages.frpo_regularizer equals the derived per-token coefficient f′(u_t) − f′(1) + "
          "Σ_{j>t} f(u_j)/u_j for 9 named f-divergences (and the strictly-future part alone)",
          "FRPO arXiv 2601.10201 Thm 4.1, Eq. 4.5–4.6", numeric=True)
def library_frpo_regularizer(d: Derivation):
    try:
        import torch

        from rlkl.advantages import frpo_regularizer
    except ImportError as exc:  # pragma: no cover
        raise SkipIdentity(f"rlkl.advantages not importable: {exc}")
    lr = torch.tensor([_LOG_U], dtype=torch.float64)
    mask = torch.ones_like(lr, dtype=torch.bool)
    worst = 0.0
    for name, f in SYMPY_F.items():
        fp = sp.diff(f, _R)
        us = [sp.exp(sp.Rational(v)) for v in _LOG_U]
        future = [sum(((f / _R).subs(_R, us[k]) for k in range(i + 1, len(us))), sp.Integer(0)) for i in range(len(us))]
        local = [fp.subs(_R, us[i]) - fp.subs(_R, 1) for i in range(len(us))]
        for include_local in (True, False):
            got = frpo_regularizer(lr, mask, name, include_local=include_local)[0]
            for i in range(len(us)):
                ex = float(sp.N(future[i] + (local[i] if include_local else 0), 40))
                worst = max(worst, abs(float(got[i]) - ex) / max(1.0, abs(ex)))
    d.eq_numeric(worst, 0.0, f"max |library − derived| / max(1, |derived|) over {len(SYMPY_F)} divergences × "
                 f"{len(_LOG_U)} tokens × (with, without local term)", atol=1e-13,
                 reason="float64 library code at exactly representable log-ratios against f′ (sympy's derivative of "
                        "f) and f(u)/u evaluated at 40 digits")
