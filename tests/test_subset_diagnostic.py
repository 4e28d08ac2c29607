"""benchmarks/subset_diagnostic.py: the ranked subset's precision per label, on hand-made scores."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
diagnostic = pytest.importorskip("subset_diagnostic")


def test_rankings_count_poison_among_the_least_suspicious_rows_of_each_label():
    # label 1 (the target) holds the poison; two poisoned rows hide among its least suspicious ones
    labels = [0, 0, 0, 1, 1, 1, 1, 1, 1]
    poisoned = [False, False, False, True, False, True, False, True, False]
    suspicion = [0.1, 0.5, 0.9, 0.0, 0.2, 0.3, 0.4, 0.95, 0.6]
    preferred = [0, 0, 1, 1, 1, 0, 0, 0, 1]
    table = diagnostic.rankings(suspicion, labels, poisoned, preferred, depths=(1, 2, 4, 10))

    negative, target = table
    assert (negative.label, negative.rows, negative.poisoned, negative.auroc) == (0, 3, 0, None)
    assert negative.poisoned_at_depth == {1: 0, 2: 0}  # a depth beyond the label's rows is left out
    assert negative.agreement_clean == pytest.approx(2 / 3) and negative.agreement_poisoned is None

    assert (target.rows, target.poisoned) == (6, 3)
    # order by suspicion: p(0.0) c(0.2) p(0.3) c(0.4) c(0.6) p(0.95)
    assert target.poisoned_at_depth == {1: 1, 2: 1, 4: 2}
    # poisoned 0.0, 0.3, 0.95 against clean 0.2, 0.4, 0.6: the poisoned row is the more suspicious in 0 + 1 + 3
    # of the 9 pairs
    assert target.auroc == pytest.approx(4 / 9)
    assert target.agreement_clean == pytest.approx(2 / 3)  # rows 4, 6, 8 prefer 1, 0, 1
    assert target.agreement_poisoned == pytest.approx(1 / 3)  # rows 3, 5, 7 prefer 1, 0, 0


def test_generation_scorers_have_no_agreement_and_the_table_says_so():
    table = diagnostic.rankings([0.2, 0.1], ["a", "a"], [True, False], [None, None], depths=(1,))
    assert table[0].agreement_clean is None and table[0].poisoned_at_depth == {1: 0}
    text = diagnostic.markdown(table, depths=(1,))
    assert text.splitlines()[2] == "| a | 2 | 1 | 1.000 | 0 |  /  |"
