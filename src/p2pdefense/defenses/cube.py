"""CUBE (Cui et al., NeurIPS 2022 Datasets & Benchmarks; OpenBackdoor `cube_defender.py`) as a data filter.

A probe model's last-prompt-token states of all rows are reduced with PCA (20 dims), then UMAP (2 dims,
n_neighbors 100, min_dist 0) and clustered with HDBSCAN (min_samples 100); within each given label the largest
cluster is kept and every other cluster holding less than `keep_share` of the label is removed. The run then
trains from the base model on the rest. Difference from the reference code: HDBSCAN's noise points (-1) are not a
cluster and stay (OpenBackdoor drops them with the small clusters). It fails when the probe does not learn the
backdoor (more likely for clean-label attacks) or when there are fewer poisoned rows than min_samples.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig, rows_by_label
from .context import DefenseContext
from .registry import register
from .scorers import ProbeSettings


class CubeConfig(DefenseConfig):
    name: Literal["cube"] = "cube"
    pca_dims: int = Field(20, ge=2)
    umap_neighbors: int = Field(100, ge=2)
    min_samples: int = Field(100, ge=1, description="HDBSCAN's min_samples (capped below the number of rows)")
    keep_share: float = Field(0.5, gt=0.0, le=1.0, description="a non-largest cluster below this share of its "
                                                              "label is removed")
    probe: ProbeSettings = Field(default_factory=ProbeSettings)


def cluster_ids(states, config: CubeConfig, seed: int) -> list[int]:
    import umap
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    rows = states.shape[0]
    reduced = PCA(n_components=min(config.pca_dims, rows - 1, states.shape[1]), random_state=seed).fit_transform(
        states.numpy())
    embedded = umap.UMAP(n_components=2, n_neighbors=min(config.umap_neighbors, rows - 1), min_dist=0.0,
                         random_state=seed).fit_transform(reduced)
    return HDBSCAN(min_samples=min(config.min_samples, rows - 1)).fit_predict(embedded).tolist()


@register
class Cube(Defense):
    config_class = CubeConfig

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        clusters = cluster_ids(context.probe(self.config.probe, examples).states, self.config, context.seed)
        removed: set[int] = set()
        for members in rows_by_label(examples).values():
            sizes = Counter(clusters[i] for i in members if clusters[i] != -1)
            if not sizes:
                continue
            largest = sizes.most_common(1)[0][0]
            small = {c for c, n in sizes.items() if c != largest and n < self.config.keep_share * len(members)}
            removed.update(i for i in members if clusters[i] in small)
        context.notes.append(f"CUBE: {len(set(clusters) - {-1})} clusters; removed {len(removed)} of "
                             f"{len(examples)} rows")
        return [ex for i, ex in enumerate(examples) if i not in removed]
