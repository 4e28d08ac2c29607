import torch

from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.probe import ProbeStats
from p2pdefense.defenses.spectral import SpectralConfig


def test_spectral_filter_drops_the_outlying_direction_of_every_label():
    rows = [Example(text=str(i), label=int(i >= 100), meta=ExampleMeta(source_index=i)) for i in range(200)]
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(200, 12, generator=generator)
    states[180:] += 6.0  # 20 rows of label 1 share a direction (a trigger's signature)
    context = DefenseContext(probe_source=lambda settings, r: ProbeStats([[0.0] * 200], states))
    kept = build_defense(SpectralConfig(remove_fraction=0.2), 2).training_rows(rows, context)
    kept_ids = {ex.meta.source_index for ex in kept}
    assert len(kept) == 160  # 20% of each label
    assert not kept_ids & set(range(180, 200))
    assert all(ex.meta.poisoned is None for ex in kept)
    assert "removed 40 of 200" in context.notes[0]
