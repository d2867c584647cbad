"""`rlkl verify` fails loudly when a section cannot run; its table fits 120 columns and cuts nothing."""

from __future__ import annotations

import json
import sys
import types

import pytest

from rlkl.commands import verify
from rlkl.report import TABLE_WIDTH, Verdict, format_table

LONG = Verdict("audit", "grpo: E U_G(p) - beta*KL(pi||pi_ref) " + "with a claim long enough to wrap " * 3,
               "FRPO arXiv 2601.10201 Prop. 3.1; a source that is longer than its column",
               "BIASED", "V2T3P2-binary-s11 G=3: rel_error 0.544 cos 0.874; terms [finite_group_utility 0.21, "
               "forward_direction 0.11, future_kl_missing 0.39]; unexplained 1.7e-16")
SHORT = Verdict("estimators", "k1 as a loss: E_pi[grad k1] = 0", "Tang & Munos arXiv 2506.09477", "PASS",
                "max rel. err 6.8e-17")


def _words(text: str) -> list[str]:
    return text.split()


def test_table_fits_120_columns_and_keeps_every_word():
    table = format_table([SHORT, LONG])
    assert max(len(line) for line in table.splitlines()) <= TABLE_WIDTH
    flat = " ".join(table.split())
    for cell in (LONG.claim, LONG.source, LONG.detail, SHORT.claim):
        for word in _words(cell):  # wrapped, never cut
            assert word in flat, word
    assert table.splitlines()[-1] == "2/2 verdicts as predicted"


def test_wide_table_puts_each_verdict_on_one_line():
    table = format_table([SHORT, LONG], wide=True)
    line = next(x for x in table.splitlines() if x.startswith("BIASED"))
    assert LONG.claim in line and LONG.source in line and LONG.detail in line


def test_surprise_is_flagged_and_counted():
    bad = Verdict("audit", "x", "y", "EXACT", "", expected=False)
    table = format_table([SHORT, bad])
    assert "EXACT!" in table and "1/2 verdicts as predicted" in table and "NOT as predicted" in table


def test_too_narrow_table_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        format_table([SHORT], width=60)


def _fake_provider(monkeypatch, name: str, verify_rows) -> str:
    module = types.ModuleType(name)
    module.verify_rows = verify_rows
    monkeypatch.setitem(sys.modules, name, module)
    return name


@pytest.mark.parametrize("case", ["missing", "raises", "only_skips", "empty"])
def test_a_section_that_cannot_run_fails_loudly(monkeypatch, capsys, case):
    def raises(quick):
        raise RuntimeError("derivations folder not found")

    providers = {
        "missing": "rlkl._no_such_module_for_test",
        "raises": _fake_provider(monkeypatch, "rlkl_test_raises", raises),
        "only_skips": _fake_provider(monkeypatch, "rlkl_test_skips", lambda quick: [
            Verdict("fake", "symbolic derivations", "here", "SKIP", "needs the source tree")]),
        "empty": _fake_provider(monkeypatch, "rlkl_test_empty", lambda quick: []),
    }
    ok = _fake_provider(monkeypatch, "rlkl_test_ok", lambda quick: [SHORT])
    monkeypatch.setattr(verify, "PROVIDERS", {"estimators": ok, "fake": providers[case]})
    from rlkl.cli import main

    assert main(["verify"]) == 1
    captured = capsys.readouterr()
    assert "section 'fake' could not run" in captured.err
    assert "FAIL!" in captured.out and verify.SECTION_RUNS in captured.out
    assert main(["verify", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    fail = [r for r in rows if r["status"] == "FAIL"]
    assert len(fail) == 1 and fail[0]["section"] == "fake" and fail[0]["detail"].startswith("could not run")


def test_single_skips_in_a_section_that_ran_are_allowed(monkeypatch, capsys):
    rows = [SHORT, Verdict("estimators", "slow identity", "here", "SKIP", "slow; skipped in quick mode")]
    monkeypatch.setattr(verify, "PROVIDERS", {"estimators": _fake_provider(monkeypatch, "rlkl_test_mixed",
                                                                           lambda quick: rows)})
    from rlkl.cli import main

    assert main(["verify"]) == 0
    assert "1/1 verdicts as predicted, 1 skipped" in capsys.readouterr().out


def test_json_keeps_sources_whole(monkeypatch, capsys):
    monkeypatch.setattr(verify, "PROVIDERS", {"audit": _fake_provider(monkeypatch, "rlkl_test_long",
                                                                      lambda quick: [LONG])})
    from rlkl.cli import main

    main(["verify", "--json"])
    assert json.loads(capsys.readouterr().out)[0]["source"] == LONG.source
