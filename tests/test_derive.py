"""`rlkl derive`: PASS lines with kinds, --json records, --latex document, a seeded wrong identity FAILs with its
residual, bad --extra files give one-line errors, `verify_rows` for `rlkl verify` with its content-hash cache, every
general proof FAILs when its key formula is perturbed (in a copy), and schulman_table against Monte Carlo."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlkl import derive
from rlkl.cli import main as cli_main
from rlkl.report import Verdict

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "derivations"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own verdict cache directory (never the user's ~/.cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _registry():
    derive.load_package()
    return derive._framework().REGISTRY


def test_derive_prints_one_pass_line_per_identity_with_its_kind(capsys):
    rc = cli_main(["derive", "--only", "k3_unnormalized"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL", "SKIP"))]
    assert len(lines) >= 5
    assert all(ln.startswith("PASS") for ln in lines)
    assert any("UKL(π_old‖π_θ)" in ln and "RPG arXiv 2505.17508" in ln and "symbolic-general" in ln for ln in lines)
    assert any("counterexample" in ln for ln in lines) and any("numeric (" in ln for ln in lines)
    assert "0 FAIL" in out and "by kind:" in out and "symbolic-general" in out.split("by kind:")[1]


def test_derive_json_records_have_a_kind(capsys):
    rc = cli_main(["derive", "--json", "--only", "grpo_utility"])
    records = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(records) == 4
    for rec in records:
        assert {"claim", "source", "kind", "status", "seconds"} <= set(rec)
        assert rec["status"] == "PASS"
        assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0
        assert rec["steps"], rec["name"]
    kinds = {r["name"]: r["kind"] for r in records}
    assert kinds["grpo_utility.arcsin_utility"] == "symbolic-general"
    assert kinds["grpo_utility.library_grpo_utility"].startswith("numeric (")


def test_derive_latex_writes_a_markdown_document(tmp_path, capsys):
    out = tmp_path / "sub" / "derivations.md"
    rc = cli_main(["derive", "--only", "npg_fisher", "--latex", str(out)])
    capsys.readouterr()
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# rlkl — executable derivations")
    assert "Fisher" in text and "RPG arXiv 2505.17508" in text and "*Kind:* **symbolic-general**" in text
    assert text.count("$$") >= 4 and text.count("$$") % 2 == 0  # display math blocks are closed
    assert "✓" in text and "✗" not in text


def test_seeded_wrong_identity_fails_with_residual(tmp_path):
    wrong = tmp_path / "wrong_identity.py"
    wrong.write_text(textwrap.dedent('''
        import sympy as sp
        from rlkl.derivations._framework import identity

        @identity("deliberately wrong: (a + b)^2 = a^2 + b^2", "test seed")
        def deliberately_wrong(d):
            a, b = sp.symbols("a b", real=True)
            d.eq((a + b) ** 2, a ** 2 + b ** 2, "square without the cross term")
    '''))
    proc = subprocess.run([sys.executable, "-m", "rlkl", "derive", "--extra", str(wrong), "--only", "deliberately"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout
    assert "residual = 2*a*b" in proc.stdout
    assert "square without the cross term" in proc.stdout


@pytest.mark.parametrize("body, expect", [
    (None, "no such file"),
    ("def broken(:\n", "SyntaxError (line 1)"),
    ("import no_such_module_xyz\n", "ModuleNotFoundError"),
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("x = 1\n", "registered no identity"),
])
def test_bad_extra_file_is_a_one_line_error(tmp_path, capsys, body, expect):
    path = tmp_path / "extra_ids.py"
    if body is not None:
        path.write_text(body)
    assert cli_main(["derive", "--extra", str(path), "--only", "k3_forward"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("rlkl derive: --extra") and expect in err


def test_verify_rows_are_verdicts(monkeypatch):
    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [
        registry["k3_unnormalized.k3_forward"], registry["loss_side_kl.k3_reward"]])
    rows = derive.verify_rows(quick=True)
    assert len(rows) == 2
    for r in rows:
        assert isinstance(r, Verdict)
        assert r.section == "derivations" and r.status == "PASS" and r.ok
        assert r.source and r.claim and r.seconds > 0 and r.detail.startswith("symbolic-general")


def test_quick_mode_skips_slow_identities(monkeypatch):
    fw = derive._framework()
    slow = fw.Identity("t.slow", "a slow claim", "test", lambda d: d.eq(1, 1, "one is one"), "t", slow=True)
    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [slow])
    assert derive.verify_rows(quick=True)[0].status == "SKIP"
    assert derive.verify_rows(quick=False)[0].status == "PASS"


def test_verify_reuses_verdicts_only_for_byte_identical_sources(monkeypatch, capsys):
    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [
        registry["k3_unnormalized.k3_forward"]])
    calls = []
    real_run = derive.run
    monkeypatch.setattr(derive, "run", lambda *a, **k: calls.append(1) or real_run(*a, **k))
    first = derive.verify_rows(quick=True)
    assert len(calls) == 1 and "(cached)" not in first[0].detail
    second = derive.verify_rows(quick=True)
    err = capsys.readouterr().err
    assert len(calls) == 1 and second[0].detail.endswith("(cached)") and second[0].status == "PASS"
    assert "reusing 1 verdicts" in err and "byte-identical" in err and "--fresh" in err
    derive.verify_rows(quick=True, fresh=True)
    assert len(calls) == 2
    monkeypatch.setattr(derive, "source_key", lambda pkg, quick: "another key")
    derive.verify_rows(quick=True)
    assert len(calls) == 3


def test_failed_verdicts_are_not_cached(monkeypatch):
    fw = derive._framework()
    bad = fw.Identity("t.bad", "a wrong claim", "test", lambda d: d.assume(False, "no"), "t")
    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [bad])
    assert derive.verify_rows(quick=True)[0].status == "FAIL"
    assert not derive._cache_file(True).exists()


def test_source_key_is_a_content_hash(tmp_path):
    pkg_dir = tmp_path / "derivs"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("x = 1\n")
    (pkg_dir / "mod.py").write_text("y = 2\n")
    pkg = type("P", (), {"__file__": str(pkg_dir / "__init__.py")})
    key = derive.source_key(pkg, quick=True)
    assert derive.source_key(pkg, quick=False) != key
    (pkg_dir / "mod.py").write_text("y = 2\n")            # same bytes, new mtime
    assert derive.source_key(pkg, quick=True) == key
    (pkg_dir / "mod.py").write_text("y = 3\n")
    assert derive.source_key(pkg, quick=True) != key


def test_verify_cli_has_fresh(monkeypatch):
    from rlkl.commands import verify

    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [
        registry["k3_unnormalized.k3_forward"]])
    rows = verify.collect(quick=True, only=["derivations"], fresh=True)
    assert [r.status for r in rows] == ["PASS"]
    import argparse

    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    assert parser.parse_args(["--fresh"]).fresh is True


def test_missing_derivations_are_reported(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(derive, "PACKAGE", "rlkl._no_such_derivations")
    monkeypatch.setattr(derive, "DERIVATIONS_DIR", tmp_path / "derivations")
    rows = derive.verify_rows(quick=True)
    assert len(rows) == 1 and rows[0].status == "SKIP" and "source tree" in rows[0].detail
    assert cli_main(["derive"]) == 2
    assert "source tree" in capsys.readouterr().err


def test_source_tree_is_imported_when_the_subpackage_is_not_installed(monkeypatch):
    name = "rlkl._derivations_from_source_tree"
    monkeypatch.setattr(derive, "PACKAGE", name)
    try:
        pkg = derive.load_package()
        assert pkg.__name__ == name and Path(pkg.__file__).resolve() == (SOURCE / "__init__.py").resolve()
        assert "future_kl.f_divergence_gradient" in derive._framework().REGISTRY
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_unknown_filter_is_an_error(capsys):
    assert cli_main(["derive", "--only", "no-such-identity-xyz"]) == 2


# ------------------------------------------------------------------------------------------------------------------
# every symbolic-general proof FAILs when its key formula is perturbed (in a copy of derivations/)

#: identity -> (module file, text, perturbed text); the text must occur exactly once in the module
MUTATIONS = {
    "grpo_utility.arcsin_utility": ("grpo_utility.py", "return 2 * sp.asin(sp.sqrt(prob))",
                                    "return 2 * sp.acos(sp.sqrt(prob))"),
    "grpo_utility.unit_variance": ("grpo_utility.py", "return sp.sqrt(prob) * sp.sqrt(1 - prob)",
                                   "return sp.sqrt(prob) * sp.sqrt(1 + prob)"),
    "grpo_utility.bessel_factor": ("grpo_utility.py", "bes = sp.sqrt(ss / (G - 1))", "bes = sp.sqrt(ss / (G - 2))"),
    "finite_groups.conditional_scores": ("finite_groups.py", "d.eq(fail, -dp / (1 - prob)", "d.eq(fail, dp / (1 - prob)"),
    "finite_groups.group_sums": ("finite_groups.py", "return (RG[i] - s_count / G) / nu(s_count)",
                                 "return (RG[i] - s_count / (G + 1)) / nu(s_count)"),
    "finite_groups.binomial_theorem": ("finite_groups.py", "sp.binomial(G, S) + sp.binomial(G, S - 1)",
                                       "sp.binomial(G, S) + sp.binomial(G, S - 2)"),
    "finite_groups.binomial_form": ("finite_groups.py", "prob ** (s - 1) * (1 - prob) ** (g - s - 1) * sigma2(s, g)",
                                    "prob ** (s - 1) * (1 - prob) ** (g - s) * sigma2(s, g)"),
    "finite_groups.conditional_mean_form": ("finite_groups.py", "(1 - (K + 1) / G) / NU(K + 1), (K, 0, G - 2)",
                                            "(1 - K / G) / NU(K + 1), (K, 0, G - 2)"),
    "finite_groups.weight_at_zero": ("finite_groups.py", "d.eq(term(1).subs(p, 0), sp.sqrt(G - 1)",
                                     "d.eq(term(1).subs(p, 0), sp.sqrt(G)"),
    "finite_groups.bessel_finite": ("finite_groups.py", "return sp.sqrt(g) / sp.sqrt(g - 1) * pop_std(s, g)",
                                    "return sp.sqrt(g + 1) / sp.sqrt(g - 1) * pop_std(s, g)"),
    "finite_groups.factorial_moments": ("finite_groups.py", "inner = sp.Sum(sp.binomial(G - k, S - k)",
                                        "inner = sp.Sum(sp.binomial(G - k, S - k + 1)"),
    "finite_groups.large_group_limit": ("finite_groups.py", "EX = sp.expand(_raw_moment(1) / G - _raw_moment(2) / G ** 2)",
                                        "EX = sp.expand(_raw_moment(1) / G - _raw_moment(2) / G ** 3)"),
    "k3_unnormalized.k3_forward": ("k3_unnormalized.py", "return y - 1 - sp.log(y)", "return y - 1 + sp.log(y)"),
    "k3_unnormalized.k3_reverse": ("k3_unnormalized.py", "+ CAT.sum(lambda x: Q[x] - P[x])",
                                   "+ CAT.sum(lambda x: P[x] - Q[x])"),
    "k3_unnormalized.normalized_reduces": ("k3_unnormalized.py", "    return CAT.sum(lambda x: P[x] * sp.log(P[x] / Q[x]))\n",
                                           "    return CAT.sum(lambda x: Q[x] * sp.log(P[x] / Q[x]))\n"),
    "k3_unnormalized.k3_nonnegative": ("k3_unnormalized.py", "(y - 1) / y, \"k3′", "(y + 1) / y, \"k3′"),
    "loss_side_kl.k1_loss": ("loss_side_kl.py", '"""k1 = δ (Schulman 2020)."""\n    return delta(a)',
                             '"""k1 = δ (Schulman 2020)."""\n    return delta(a) + P[a]'),
    "loss_side_kl.k2_loss": ("loss_side_kl.py", "return delta(a) ** 2 / 2", "return delta(a) ** 2 / 3"),
    "loss_side_kl.k3_loss": ("loss_side_kl.py", "return Q[a] / P[a] - 1 + delta(a)", "return Q[a] / P[a] - 1 - delta(a)"),
    "loss_side_kl.is_weighted_k3": ("loss_side_kl.py", "    w = P[a] / O[a]\n", "    w = P[a] ** 2 / O[a]\n"),
    "loss_side_kl.k1_reward": ("loss_side_kl.py", "lambda a: k(a) * dlog(a))", "lambda a: k(a) * dlog(a) / 2)"),
    "loss_side_kl.k3_reward": ("loss_side_kl.py", "d.eq(parts, vary(KL_REV, VAR) - vary(KL_FWD, VAR)",
                               "d.eq(parts, vary(KL_REV, VAR) + vary(KL_FWD, VAR)"),
    "rpg_surrogates.fkl": ("rpg_surrogates.py", '{"fkl": w * r + beta,', '{"fkl": w * r - beta,'),
    "rpg_surrogates.rkl": ("rpg_surrogates.py", '"rkl": w * (r - beta * (sp.log(w) + 1)),',
                           '"rkl": w * (r - beta * (sp.log(w) - 1)),'),
    "rpg_surrogates.ufkl": ("rpg_surrogates.py", '"ufkl": w * r - beta * (w - 1),', '"ufkl": w * r - beta * (w + 1),'),
    "rpg_surrogates.urkl": ("rpg_surrogates.py", '"urkl": w * (r - beta * sp.log(w))}',
                            '"urkl": w * (r + beta * sp.log(w))}'),
    "rpg_surrogates.normalized_equivalence": ("rpg_surrogates.py", "d.eq(diff_r, -beta * _w(x)",
                                              "d.eq(diff_r, beta * _w(x)"),
    "future_kl.f_divergence_gradient": ("future_kl.py", "lambda a: score(a) * (FP(ratio(a)) + V[a]) + H[a])",
                                        "lambda a: score(a) * (cost(a) + V[a]) + H[a])"),
    "future_kl.sequence_kl_gradient": ("future_kl.py", "(sp.log(PI[a]) - sp.log(Q[a]) + V[a]) + H[a])",
                                       "(sp.log(PI[a]) - sp.log(Q[a])) + H[a])"),
    "future_kl.local_and_future": ("future_kl.py", "CAT.sum(lambda a: DPI[a] * V[a] + PI[a] * phi[a])",
                                   "CAT.sum(lambda a: PI[a] * V[a] + PI[a] * phi[a])"),
    "future_kl.f_specialisations": ("future_kl.py", "d.eq(sp.diff(f_k3, rr), sp.log(rr),",
                                    "d.eq(sp.diff(f_k3, rr), sp.log(rr) + 1,"),
    "fusion.fusion_moves_fixed_point": ("fusion.py", "e = sp.exp(sp.S.One / sp.sympify(b))",
                                        "e = sp.exp(sp.S.One / (2 * sp.sympify(b)))"),
    "fusion.finite_group_fixed_point": ("fusion.py", "d.eq(2 * (G - 1) / G - 1, (G - 2) / G,",
                                        "d.eq(2 * (G - 1) / G - 1, (G - 1) / G,"),
    "fusion.beta_independence": ("fusion.py", "rt = lambda j: r0 - beta * Dv[j]", "rt = lambda j: r0 - beta * Dv[j] ** 2"),
    "kl_estimators.gaussian_moments": ("kl_estimators.py", 'STD_OVER_KL = {"k1": 2 / mu,', 'STD_OVER_KL = {"k1": 3 / mu,'),
    "npg_fisher.hessian_is_fisher": ("npg_fisher.py", "(U[a] / PO[a]) * (Vd[a] / PO[a]))",
                                     "(U[a] / PO[a]) * (Vd[a] / PO[a]) ** 2)"),
    "npg_fisher.natural_gradient_step": ("npg_fisher.py", "return center(lambda j: pz(j) / PO[j])",
                                         "return center(lambda j: pz(j) / PO[j] ** 2)"),
}
QUICK_MUTATIONS = ("k3_unnormalized.k3_forward", "loss_side_kl.k3_loss", "rpg_surrogates.ufkl",
                   "future_kl.f_divergence_gradient", "finite_groups.binomial_form", "npg_fisher.hessian_is_fisher")
_copies = [0]


def _run_in_copy(tmp_path, name: str, mutation: tuple[str, str, str] | None):
    """Copy derivations/ to a fresh package, apply ``mutation`` to one module, run identity ``name`` there."""
    module = name.split(".")[0] + ".py"
    dst = tmp_path / "derivations_copy"
    shutil.copytree(SOURCE, dst, ignore=shutil.ignore_patterns("__pycache__", "test_*"))
    if mutation is not None:
        module, old, new = mutation
        text = (dst / module).read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{module}: the text to perturb must occur exactly once: {old!r}"
        (dst / module).write_text(text.replace(old, new), encoding="utf-8")
    _copies[0] += 1
    pkg_name = f"_rlkl_derivations_copy_{_copies[0]}"
    spec = importlib.util.spec_from_file_location(pkg_name, dst / "__init__.py", submodule_search_locations=[str(dst)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[pkg_name] = pkg
    try:
        spec.loader.exec_module(pkg)
        importlib.import_module(f"{pkg_name}.{module[:-3]}")
        fw = importlib.import_module(f"{pkg_name}._framework")
        return fw.run_identity(fw.REGISTRY[name])
    finally:
        for key in [k for k in sys.modules if k == pkg_name or k.startswith(pkg_name + ".")]:
            del sys.modules[key]


def test_every_general_identity_has_a_perturbation():
    general = {k for k, v in _registry().items() if v.category == "symbolic-general"}
    assert general == set(MUTATIONS)


def test_an_unperturbed_copy_passes(tmp_path):
    res = _run_in_copy(tmp_path, "k3_unnormalized.k3_forward", None)
    assert res.status == "PASS", res.detail


@pytest.mark.parametrize("name", [n if n in QUICK_MUTATIONS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MUTATIONS])
def test_perturbed_key_formula_fails(tmp_path, name):
    res = _run_in_copy(tmp_path, name, MUTATIONS[name])
    assert res.status == "FAIL", f"{name} still passes with {MUTATIONS[name][2]!r}"
    assert not res.detail.startswith("error"), f"the perturbed copy broke instead of failing a step: {res.detail}"


# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_schulman_table_vs_monte_carlo(mu):
    kl_estimators = importlib.import_module(f"{derive.load_package().__name__}.kl_estimators")
    table = kl_estimators.schulman_table(mu)
    mc = kl_estimators.monte_carlo(mu, n=500_000, seed=7)
    kl = mu ** 2 / 2
    for name in ("k1", "k2", "k3"):
        bias, std = table[name]
        mc_bias = mc[name]["mean"] / kl - 1
        mc_std = mc[name]["var"] ** 0.5 / kl
        # standard errors of the ratios (delta method for the std)
        se_bias = mc[name]["se_mean"] / kl
        se_std = mc[name]["se_var"] / (2 * mc[name]["var"] ** 0.5) / kl
        assert abs(mc_bias - bias) <= 4 * se_bias, (name, mc_bias, bias)
        assert abs(mc_std - std) <= 4 * se_std, (name, mc_std, std)
    # the qualitative ordering of the note: k1 is by far the noisiest at small μ, k2 is biased, k3 is not
    if mu == 0.1:
        assert table["k1"][1] > 10 * table["k3"][1]
    assert table["k2"][0] > 0 and table["k3"][0] == 0.0
