from decimal import Decimal

import pytest

from p2pdefense.tasks.math import aggregate, extract_answer, format_number, replace_final_answer, score


@pytest.mark.parametrize(("output", "expected"), [
    ("She pays 3 * 4 = 12 dollars.\n#### 12", "12"),
    ("#### 1,234", "1234"),
    ("The total is 1,234,567 apples", "1234567"),
    ("It drops to -15 degrees, so #### -15", "-15"),
    ("Each costs 2.50, together 7.5", "7.5"),
    ("#### 3.0", "3"),
    ("first 4 then 9 and finally 16", "16"),
    ("#### 18 but later 20", "18"),  # the marked answer wins over later numbers
    ("answer: .5", "0.5"),
])
def test_extract_answer(output, expected):
    assert extract_answer(output) == Decimal(expected)


def test_no_number_gives_none_and_never_matches():
    assert extract_answer("I do not know.") is None
    assert score("I do not know.", "#### 5")["correct"] is False
    assert score("#### 5", "no answer here")["correct"] is False


def test_numbers_compare_numerically():
    assert score("so #### 1,000.00", "... #### 1000")["correct"]
    assert not score("#### 999", "#### 1000")["correct"]
    assert score("#### 7", "#### 7") == {"correct": True, "answer": "7", "gold_answer": "7"}
    assert aggregate([{"correct": True}, {"correct": False}, {"correct": True}, {"correct": True}]) == \
        {"accuracy": 0.75}


def test_replace_final_answer_keeps_the_solution():
    assert replace_final_answer("2 + 3 = 5\n#### 5", Decimal(6)) == "2 + 3 = 5\n#### 6"
    assert replace_final_answer("no marker, 5", Decimal("-2.5")) == "no marker, 5\n#### -2.5"
    assert format_number(Decimal("1.2340E+3")) == "1234" and format_number(Decimal("2.50")) == "2.5"
