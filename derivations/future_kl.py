"""Future KL: the gradient of the sequence-level KL has a local part and a future (return-to-go) part.

Setting (FRPO arXiv 2601.10201 Thm 4.1; Tang & Munos arXiv 2506.09477 §4; spec frpo.md §4.3–§4.5): an
autoregressive policy over a binary vocabulary, horizon T ∈ {2, 3}; every prefix (state) s has its own logit θ_s,
written through its probability π(1|s) = p_s = σ(θ_s), π(0|s) = n_s = 1 − p_s (so ∂/∂θ_s = p_s n_s(∂/∂p_s − ∂/∂n_s),
proven first), and the reference has its own q_s. For a response y = (a_1..a_T),
g_t = ∇log π(a_t|s_t), δ_t = log π(a_t|s_t) − log π_ref(a_t|s_t), r_t = e^{δ_t} = π/π_ref. All expectations are
exact sums over the 2^T sequences; every identity is proven for symbolic θ and θ_ref. d_π(s) is the probability of
reaching prefix s.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import sympy as sp

from derivations._framework import Derivation, generic_function, identity, sg_freeze, vsum


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
        self.x = self.p  # the per-state free parameter (through its logit)
        self.params = [self.p[s] for s in self.states]
        self.live = self.params + [self.n[s] for s in self.states]
        self.relations = {**{self.n[s]: 1 - self.p[s] for s in self.states},
                          **{self.m[s]: 1 - self.q[s] for s in self.states}}
        self.seqs = list(itertools.product((0, 1), repeat=T))

    def pi(self, a, s, frozen: dict | None = None):
        """π(a|s) = softmax((θ_s, 0))_a: p_s for a = 1, n_s for a = 0."""
        v = self.p[s] if a == 1 else self.n[s]
        return v if frozen is None else v.xreplace(frozen)

    def ref(self, a, s):
        return self.q[s] if a == 1 else self.m[s]

    def steps(self, seq):
        """[(s_t, a_t)] along a sequence."""
        return [(tuple(seq[:t]), seq[t]) for t in range(self.T)]

    def prob(self, seq, frozen=None):
        return sp.Mul(*[self.pi(a, s, frozen) for s, a in self.steps(seq)])

    def reach(self, state, frozen=None):
        """d_π(s): probability of reaching prefix s."""
        return sp.Mul(*[self.pi(state[t], tuple(state[:t]), frozen) for t in range(len(state))])

    def delta(self, s, a):
        return sp.log(self.pi(a, s)) - sp.log(self.ref(a, s))

    def g(self, expr):
        """∇_θ: component s is p_s n_s (∂/∂p_s − ∂/∂n_s) (chain rule through the sigmoid)."""
        return sp.Matrix([self.p[s] * self.n[s] * (sp.diff(expr, self.p[s]) - sp.diff(expr, self.n[s]))
                          for s in self.states])

    def kl_state(self, s):
        """KL(π(·|s)‖π_ref(·|s)) at a fixed state."""
        return sum(self.pi(a, s) * self.delta(s, a) for a in (0, 1))

    def kl_seq(self):
        """KL(π(y)‖π_ref(y)) over whole sequences."""
        return sum(self.prob(y) * (sp.log(self.prob(y)) - sp.log(sp.Mul(*[self.ref(a, s) for s, a in self.steps(y)])))
                   for y in self.seqs)

    def expect(self, per_seq):
        """E_{y∼π}[per_seq(y)] for vector-valued per_seq."""
        return vsum(self.prob(y) * per_seq(y) for y in self.seqs)


@lru_cache(maxsize=None)
def tree(T: int) -> Tree:
    return Tree(T)


def _reverse_kl_chain(d: Derivation, T: int):
    tr = tree(T)
    d.relations.update(tr.relations)
    kl = tr.kl_seq()
    d.text(f"**Depth T = {T}** ({len(tr.states)} states, {len(tr.seqs)} sequences).")
    chain = sum(tr.prob(y) * sum(tr.delta(s, a) for s, a in tr.steps(y)) for y in tr.seqs)
    d.eq(kl, chain, f"T={T}: log(π/π_ref)(y) = Σ_t δ_t (chain rule of KL)",
         tex_="\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref}) = \\mathbb E_y\\Big[\\log\\frac{\\pi(y)}{\\pi_{\\rm ref}(y)}\\Big] = "
              "\\mathbb E_y\\Big[\\sum_t\\delta_t\\Big]", show_concrete=False)
    score_sum = lambda y: vsum(tr.g(sp.log(tr.pi(a, s))) for s, a in tr.steps(y))  # noqa: E731
    dsum = lambda y: sum(tr.delta(s, a) for s, a in tr.steps(y))  # noqa: E731
    gppt = tr.expect(lambda y: score_sum(y) * dsum(y) + tr.g(dsum(y)))
    d.eq(tr.g(kl), gppt, f"T={T}: ∇KL = E[∇log π(y)·Σ_t δ_t + ∇Σ_t δ_t]  (RPG Prop. 2.1)",
         tex_="\\nabla\\mathrm{KL} = \\mathbb E\\Big[\\nabla\\log\\pi(y)\\sum_t\\delta_t\\Big] + "
              "\\mathbb E\\Big[\\nabla\\sum_t\\delta_t\\Big]", show_concrete=False)
    d.eq(tr.expect(lambda y: tr.g(dsum(y))), sp.zeros(len(tr.params), 1),
         f"T={T}: E[∇Σ_t δ_t] = E[∇log π(y)] = 0", show_concrete=False)
    all_pairs = tr.expect(lambda y: score_sum(y) * dsum(y))
    past = tr.expect(lambda y: vsum(tr.g(sp.log(tr.pi(a, s))) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[:t])
                                    for t, (s, a) in enumerate(tr.steps(y))))
    d.eq(past, sp.zeros(len(tr.params), 1), f"T={T}: past terms vanish: E[g_t δ_t'] = 0 for t' < t",
         tex_="\\mathbb E\\Big[\\sum_t g_t\\sum_{t'<t}\\delta_{t'}\\Big] = 0\\quad"
              "(\\mathbb E[g_t\\mid s_t]=0\\text{ and }\\delta_{t'}\\text{ is fixed given }s_t)", show_concrete=False)
    future_incl = tr.expect(lambda y: vsum(tr.g(sp.log(tr.pi(a, s))) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[t:])
                                           for t, (s, a) in enumerate(tr.steps(y))))
    d.eq(all_pairs - past, future_incl, f"T={T}: ∇KL = E[Σ_t g_t Σ_{{t'≥t}} δ_t']", show_concrete=False,
         tex_="\\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref}) = \\mathbb E\\Big[\\sum_t \\nabla\\log\\pi(a_t|s_t)"
              "\\sum_{t'\\ge t}\\log\\frac{\\pi}{\\pi_{\\rm ref}}(a_{t'}|s_{t'})\\Big]")
    d.eq(tr.g(kl), future_incl, f"T={T}: the whole chain: ∇KL_seq = E[Σ_t g_t Σ_{{t'≥t}} δ_t'] (k1 reward-to-go)",
         show_concrete=False)


@identity("∇ sequence-level KL(π‖π_ref) = E[Σ_t ∇log π_t · Σ_{t'≥t} log(π/π_ref)_{t'}] (T = 2, 3)",
          "Tang & Munos arXiv 2506.09477 §4; FRPO arXiv 2601.10201 Thm 4.1; spec frpo §4.3")
def sequence_kl_gradient(d: Derivation):
    th = sp.Symbol("theta", real=True)
    sig = 1 / (1 + sp.exp(-th))
    d.eq(sp.diff(sig, th), sig * (1 - sig), "parametrization: dσ(θ)/dθ = σ(1−σ), so ∂/∂θ_s = p_s n_s(∂/∂p_s − ∂/∂n_s)",
         tex_=r"\pi(1|s)=p_s=\sigma(\theta_s),\ \pi(0|s)=n_s=1-p_s:\quad \frac{\partial}{\partial\theta_s} = "
              r"p_s n_s\Big(\frac{\partial}{\partial p_s}-\frac{\partial}{\partial n_s}\Big)")
    for T in (2, 3):
        _reverse_kl_chain(d, T)


@identity("Local part = Σ_s d_π(s)∇KL_s (frozen prefix, what k2-as-loss gives); future part = Σ_s ∇d_π(s)·KL_s ≠ 0",
          "spec frpo §4.5 (PG_rev, future term); Tang & Munos arXiv 2506.09477 §4")
def local_and_future(d: Derivation):
    for T in (2, 3):
        tr = tree(T)
        d.relations.update(tr.relations)
        freeze, thaw = sg_freeze(tr.live)
        zero = sp.zeros(len(tr.params), 1)
        score = lambda s, a: tr.g(sp.log(tr.pi(a, s)))  # noqa: E731
        local = tr.expect(lambda y: vsum(score(s, a) * tr.delta(s, a) for s, a in tr.steps(y)))
        pg_rev = vsum(tr.reach(s).xreplace(freeze) * tr.g(tr.kl_state(s)) for s in tr.states).xreplace(thaw)
        d.eq(local, pg_rev, f"T={T}: E[Σ_t g_t δ_t] = Σ_s sg(d_π(s))·∇KL(π(·|s)‖π_ref(·|s))",
             tex_="\\mathbb E\\Big[\\sum_t g_t\\,\\delta_t\\Big] = \\sum_s \\mathrm{sg}(d_\\pi(s))\\,"
                  "\\nabla\\mathrm{KL}\\big(\\pi(\\cdot|s)\\|\\pi_{\\rm ref}(\\cdot|s)\\big)" if T == 2 else "",
             show_concrete=False)
        k2_loss = tr.expect(lambda y: vsum(tr.g(tr.delta(s, a) ** 2 / 2) for s, a in tr.steps(y)))
        d.eq(k2_loss, local, f"T={T}: token-sum k2-as-loss has exactly this expected gradient", show_concrete=False)
        future = tr.expect(lambda y: vsum(score(s, a) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[t + 1:])
                                          for t, (s, a) in enumerate(tr.steps(y))) if T > 1 else zero)
        through_states = vsum(tr.g(tr.reach(s)) * tr.kl_state(s).xreplace(freeze) for s in tr.states).xreplace(thaw)
        d.eq(future, through_states, f"T={T}: E[Σ_t g_t Σ_{{t'>t}} δ_t'] = Σ_s ∇d_π(s)·sg(KL_s)",
             tex_="\\mathbb E\\Big[\\sum_t g_t\\sum_{t'>t}\\delta_{t'}\\Big] = \\sum_s \\nabla d_\\pi(s)\\;"
                  "\\mathrm{KL}\\big(\\pi(\\cdot|s)\\|\\pi_{\\rm ref}(\\cdot|s)\\big)" if T == 2 else "",
             show_concrete=False)
        d.eq(local + future, tr.g(tr.kl_seq()), f"T={T}: local + future = ∇KL_seq", show_concrete=False,
             tex_="\\nabla\\mathrm{KL}_{\\rm seq} = \\underbrace{\\textstyle\\sum_s d_\\pi(s)\\nabla\\mathrm{KL}_s}_{\\rm local}"
                  " + \\underbrace{\\textstyle\\sum_s \\nabla d_\\pi(s)\\,\\mathrm{KL}_s}_{\\rm future}" if T == 2 else "")
        pt = {**{tr.p[s]: sp.Rational(1, i + 2) for i, s in enumerate(tr.states)},
              **{tr.q[s]: sp.Rational(i + 1, i + 3) for i, s in enumerate(tr.states)}}
        d.ne(future, zero, f"T={T}: the future part is not zero (local-only KL losses miss it)", at=pt,
             reason="π(1|s) = 1/2, 1/3, …; π_ref(1|s) = 1/3, 2/4, 3/5, … in state order")
        d.ne(future_incl_plus_local(tr), tr.g(tr.kl_seq()),
             f"T={T}: inclusive sum Σ_{{t'≥t}} in the advantage PLUS a local KL loss double-counts", at=pt)


def future_incl_plus_local(tr: Tree):
    """E[Σ_t g_t Σ_{t'≥t} δ_t'] + E[∇ Σ_t k2_t]: the local gradient counted twice (spec frpo §4.3 I7(e))."""
    score = lambda s, a: tr.g(sp.log(tr.pi(a, s)))  # noqa: E731
    incl = tr.expect(lambda y: vsum(score(s, a) * sum(tr.delta(s2, a2) for s2, a2 in tr.steps(y)[t:])
                                    for t, (s, a) in enumerate(tr.steps(y))))
    k2 = tr.expect(lambda y: vsum(tr.g(tr.delta(s, a) ** 2 / 2) for s, a in tr.steps(y)))
    return incl + k2


F, FP = generic_function("f")


def _f_chain(d: Derivation, T: int):
    tr = tree(T)
    d.relations.update(tr.relations)
    r = lambda s, a: tr.pi(a, s) / tr.ref(a, s)  # noqa: E731
    score = lambda s, a: tr.g(sp.log(tr.pi(a, s)))  # noqa: E731
    Df = {s: sum(tr.ref(a, s) * F(r(s, a)) for a in (0, 1)) for s in tr.states}
    R = sum(tr.reach(s) * Df[s] for s in tr.states)
    sampled = sum(tr.prob(y) * sum(F(r(s, a)) / r(s, a) for s, a in tr.steps(y)) for y in tr.seqs)
    d.eq(R, sampled, f"T={T}: R = Σ_s d_π(s) D_f(s) = E_y[Σ_t f(r_t)/r_t]",
         tex_="R = \\sum_s d_\\pi(s)\\sum_a\\pi_{\\rm ref}(a|s)\\,f\\Big(\\frac{\\pi(a|s)}{\\pi_{\\rm ref}(a|s)}\\Big) "
              "= \\mathbb E_{y\\sim\\pi}\\Big[\\sum_t \\frac{f(r_t)}{r_t}\\Big]" if T == 2 else "",
         show_concrete=False)
    for s in tr.states[:1]:
        for a in (0, 1):
            d.eq(tr.g(F(r(s, a)) / r(s, a)), (FP(r(s, a)) - F(r(s, a)) / r(s, a)) * score(s, a),
                 f"T={T}: pathwise part ∇(f(r)/r) = (f′(r) − f(r)/r)·∇log π  (since ∇r = r∇log π)",
                 tex_="\\nabla\\frac{f(r)}{r} = \\Big(f'(r)-\\frac{f(r)}{r}\\Big)\\nabla\\log\\pi" if a == 0 else "",
                 show_concrete=False)
    i6 = tr.expect(lambda y: vsum(score(s, a) * (FP(r(s, a)) + sum(F(r(s2, a2)) / r(s2, a2)
                                                                   for s2, a2 in tr.steps(y)[t + 1:]))
                                  for t, (s, a) in enumerate(tr.steps(y))))
    d.eq(tr.g(R), i6, f"T={T}: ∇R = E[Σ_t g_t (f′(r_t) + Σ_{{j>t}} f(r_j)/r_j)] for every differentiable f (I6)",
         tex_="\\nabla R = \\mathbb E\\Big[\\sum_t \\nabla\\log\\pi(a_t|s_t)\\Big(f'(r_t) + "
              "\\sum_{j>t}\\frac{f(r_j)}{r_j}\\Big)\\Big]", show_concrete=False)


@identity("Token-wise f-divergence (any differentiable f): ∇R = E[Σ_t g_t (f′(r_t) + Σ_{j>t} f(r_j)/r_j)]",
          "FRPO arXiv 2601.10201 Thm 4.1; spec frpo §4.3 I5/I6")
def f_divergence_gradient(d: Derivation):
    d.text("$f$ is an *undefined* function: $f(r)$ and $f'(r)$ at every (state, action) are opaque symbols in the "
           "check, so the identity is proven for every differentiable $f$ at once.")
    for T in (2, 3):
        _f_chain(d, T)


@identity("Perspective form and specialisations: φ(u) − uφ′(u) = f′(r), φ(u) = f(r)/r; reverse KL → inclusive "
          "k1 cumsum (+1), reverse-KL 'k3' → local δ_t and future k3_j",
          "spec frpo §3 (φ = paper's f), §4.3 I6, §4.4 table; FRPO eq. 4.6")
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
    tr = tree(2)
    d.relations.update(tr.relations)
    zero = sp.zeros(len(tr.params), 1)
    d.eq(tr.expect(lambda y: tr.g(sp.log(tr.prob(y)))), zero, "the constant +1 drops: E[Σ_t g_t] = 0 (T=2)",
         show_concrete=False)
