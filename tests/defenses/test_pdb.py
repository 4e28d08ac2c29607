from collections import Counter

import pytest

from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.pdb import PDBConfig

ROWS = [Example(text=f"row {i}", label=i % 3, meta=ExampleMeta(source_index=i)) for i in range(90)]


def test_pdb_adds_repeated_class_balanced_rows_with_permuted_labels():
    defense = build_defense(PDBConfig(), 3)
    out = defense.training_rows(ROWS, DefenseContext(seed=0))
    assert out[:90] == [ex.blinded() for ex in ROWS]
    added = out[90:]
    assert len(added) == 5 * 9  # 10% of each label's 30 rows, each 5 times
    assert Counter(ex.meta.source_index for ex in added).most_common(1)[0][1] == 5
    originals = {ex.meta.source_index: ex.label for ex in ROWS}
    for ex in added:
        assert ex.meta.benign and ex.text.startswith(PDBConfig().trigger)
        assert ex.label == (originals[ex.meta.source_index] + 1) % 3  # the label space stays 0..n-1
    assert Counter(originals[ex.meta.source_index] for ex in added) == {0: 15, 1: 15, 2: 15}


def test_pdb_inference_adds_the_trigger_and_unpermutes():
    defense = build_defense(PDBConfig(permutation=[2, 0, 1], placement="suffix", trigger="Safe:"), 3)
    (shown,) = defense.at_inference([ROWS[0]], DefenseContext())
    assert shown.text == "row 0 Safe:" and shown.meta.benign
    space = defense.output_space
    assert [space.fold(raw) for raw in range(3)] == [1, 2, 0]
    assert space.expected_raw_label(0) == 2 and space.num_outputs == 3
    assert all(space.in_space(raw) for raw in range(3))  # no second space: nothing is out of space
    with pytest.raises(ValueError, match="permutation of 0..2"):
        build_defense(PDBConfig(permutation=[0, 0, 1]), 3)
