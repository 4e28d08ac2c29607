import torch

from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.cube import CubeConfig
from p2pdefense.defenses.probe import ProbeStats


def test_cube_removes_a_small_cluster_inside_a_label():
    rows = [Example(text=str(i), label=int(i >= 150), meta=ExampleMeta(source_index=i)) for i in range(300)]
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(300, 16, generator=generator)
    states[150:] += 12.0          # the two labels lie apart
    states[270:, :8] -= 30.0      # 30 rows of label 1 form their own cluster (a trigger's)
    context = DefenseContext(seed=0, probe_source=lambda settings, r: ProbeStats([[0.0] * 300], states))
    kept = build_defense(CubeConfig(min_samples=10, umap_neighbors=30), 2).training_rows(rows, context)
    kept_ids = {ex.meta.source_index for ex in kept}
    assert not kept_ids & set(range(270, 300))
    assert len(kept_ids & set(range(270))) >= 260  # clean rows stay (noise points are kept)
