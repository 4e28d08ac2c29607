"""Activation clustering (Chen et al., SafeAI 2019) as a data filter, with the logic of IBM ART's
`ActivationDefence` (its "relative size" analysis), for every label.

Per given label, a probe model's last-prompt-token states are reduced to `dims` dimensions (PCA, fitted on all of
the label's rows) and split into two clusters by k-means (fitted once on all rows: BackdoorBench fits per
mini-batch, so its cluster ids change meaning between batches, and flags rows other than those clustered); the
smaller cluster is removed when it holds less than `max_relative_size` of the label (without such a rule a
cluster is flagged in every label). The run then trains from the base model on the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig, rows_by_label
from .context import DefenseContext
from .registry import register
from .scorers import ProbeSettings


class ActivationClusteringConfig(DefenseConfig):
    name: Literal["activation_clustering"] = "activation_clustering"
    dims: int = Field(10, ge=1, description="PCA dimensions before clustering")
    max_relative_size: float = Field(0.35, gt=0.0, lt=0.5, description="the smaller cluster is poison below this "
                                                                         "share of its label (ART's default)")
    probe: ProbeSettings = Field(default_factory=ProbeSettings)


def smaller_cluster(states, dims: int, seed: int) -> tuple[list[int], float]:
    """Positions in the smaller of two k-means clusters of the PCA-reduced states, and its share."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    reduced = PCA(n_components=min(dims, states.shape[0] - 1, states.shape[1]), random_state=seed).fit_transform(
        states.numpy())
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
    small = int((labels == 1).sum() < (labels == 0).sum())
    members = [i for i, label in enumerate(labels) if label == small]
    return members, len(members) / len(labels)


@register
class ActivationClustering(Defense):
    config_class = ActivationClusteringConfig

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        states = context.probe(self.config.probe, examples).states
        removed: set[int] = set()
        for label, members in sorted(rows_by_label(examples).items()):
            if len(members) < 3:
                continue
            cluster, share = smaller_cluster(states[members], self.config.dims, context.seed)
            if share < self.config.max_relative_size:
                removed.update(members[i] for i in cluster)
            context.notes.append(f"label {label}: smaller cluster {share:.1%} of {len(members)} rows"
                                 f"{' removed' if share < self.config.max_relative_size else ' kept'}")
        return [ex for i, ex in enumerate(examples) if i not in removed]
