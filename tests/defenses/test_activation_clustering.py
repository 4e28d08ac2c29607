import torch

from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.activation_clustering import ActivationClusteringConfig
from p2pdefense.defenses.probe import ProbeStats


def test_a_small_separate_cluster_is_removed_and_a_balanced_split_is_kept():
    rows = [Example(text=str(i), label=int(i >= 100), meta=ExampleMeta(source_index=i)) for i in range(200)]
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(200, 16, generator=generator)
    states[185:] += 8.0                 # label 1: 15 of 100 rows form their own cluster (poison-like)
    states[:50, :4] += 6.0              # label 0: two halves, a natural split that must not be flagged
    context = DefenseContext(probe_source=lambda settings, r: ProbeStats([[0.0] * 200], states))
    kept = build_defense(ActivationClusteringConfig(), 2).training_rows(rows, context)
    kept_ids = {ex.meta.source_index for ex in kept}
    assert kept_ids == set(range(185))
    assert any("label 0" in note and "kept" in note for note in context.notes)
    assert any("label 1: smaller cluster 15.0% of 100 rows removed" in note for note in context.notes)
