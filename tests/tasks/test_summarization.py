import pytest

from p2pdefense.tasks.summarization import CharAwareTokenizer, aggregate, rouge


def test_english_rouge_matches_hand_computation():
    # unigrams: 2 of 3 shared -> P = R = F = 2/3; bigrams: "the cat" of 2 -> 1/2; LCS "the cat" -> 2/3
    scores = rouge("the cat sat", "The cat ran")
    assert scores == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 2, "rougeL": 2 / 3})
    # prediction 4 tokens, reference 2 tokens, 2 shared: P = 1/2, R = 1, F = 2/3
    assert rouge("a b c d", "a d")["rouge1"] == pytest.approx(2 / 3)
    assert rouge("a b c d", "a d")["rougeL"] == pytest.approx(2 / 3)  # LCS "a d"


def test_chinese_is_scored_on_characters():
    # 我 爱 北 京 vs 我 爱 上 海: 2 of 4 characters -> 1/2; bigram 我爱 of 3 -> 1/3; LCS 我爱 -> 1/2
    assert rouge("我爱北京", "我爱上海") == pytest.approx({"rouge1": 0.5, "rouge2": 1 / 3, "rougeL": 0.5})
    assert rouge("肺部未见明显异常", "肺部未见明显异常")["rougeL"] == pytest.approx(1.0)
    # without character tokens rouge-score would see no tokens at all and give 0
    assert CharAwareTokenizer().tokenize("右肺CT 12mm结节") == ["右", "肺", "ct", "12mm", "结", "节"]


def test_aggregate_means():
    assert aggregate([{"rouge1": 1.0, "rouge2": 0.5, "rougeL": 1.0}, {"rouge1": 0.0, "rouge2": 0.5, "rougeL": 0.5}]) \
        == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.75}
