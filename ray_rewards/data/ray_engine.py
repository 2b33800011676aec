"""The Ray engines of :func:`~ray_rewards.data.relabel_dataset`.

``"ray"``: one ``map_batches`` stage over a pool of actors, each holding a copy of
the net (on a GPU when ``num_gpus`` asks for one), so a recorded data set is
relabeled at the speed of the cluster. A batch whose rows do not fit the net fails
in its worker; Ray Data delivers that as its UserCodeException, and
:func:`~ray_rewards.data.root_cause` picks the message out. With
``update_stats=True`` each actor's copy updates its statistics batch by batch and
reports what each batch added (a :class:`~ray_rewards.networks.NormSync` report)
to a small collector actor: the side channel, because per-batch statistics are not
rows. Ray Data re-runs a batch whose worker died; such a batch is counted again
(at-least-once, as any side effect of a Ray Data task).

``"local"`` on a Dataset: the caller's process pulls the batches
(``iter_batches``), relabels them with its own net copy and puts the results in the
object store as it goes: no actor pool to start, a materialized Dataset back.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray

from ray_rewards import networks
from ray_rewards.actors.wire import actor_device
from ray_rewards.data.batches import BatchRelabeler
from ray_rewards.reward_nets import RewardNet
from ray_rewards.stats import Moments

BLOCK_BYTES = 64 * 2**20
"""The local engine puts its output in the object store in blocks of about this size."""


@ray.remote(num_cpus=0)
class _MomentsCollector:
    """Side channel: collects what each relabeled batch added to the statistics."""

    def __init__(self) -> None:
        self._added: list[dict[str, Moments]] = []

    def add(self, added: dict[str, Moments]) -> None:
        self._added.append(added)

    def added(self) -> list[dict[str, Moments]]:
        return self._added


class _RelabelBatches:
    """The ``map_batches`` callable: one reward-net copy per Ray Data actor."""

    def __init__(
        self,
        wire: bytes | str,
        reward_type: str | None,
        column: str,
        update_stats: bool,
        predict_kwargs: dict[str, Any],
        collector: Any,
        actions: str = "env",
    ):
        self.relabel = BatchRelabeler(
            wire, reward_type, column, update_stats, predict_kwargs, actor_device(), actions
        )
        self.collector = collector

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.relabel(batch)
        sync = self.relabel.sync
        if sync is not None:
            added = sync.report()
            sync.reset()
            ray.get(self.collector.add.remote(added))
        return out


def relabel_with_actors(
    ds: ray.data.Dataset,
    reward: RewardNet,
    wire: bytes | str,
    *,
    column: str,
    reward_type: str | None,
    update_stats: bool,
    batch_size: int,
    concurrency: int,
    num_gpus: float,
    num_cpus: float,
    predict_kwargs: dict[str, Any],
    actions: str = "env",
) -> ray.data.Dataset:
    """The ``"ray"`` engine (lazy unless ``update_stats``, whose merged statistics are
    written into ``reward`` once every batch ran); ``actions``: the units of the
    data's actions (``BatchRelabeler``'s argument).
    """
    collector = _MomentsCollector.remote() if update_stats else None
    out = ds.map_batches(
        _RelabelBatches,
        fn_constructor_kwargs=dict(
            wire=wire,
            reward_type=reward_type,
            column=column,
            update_stats=update_stats,
            predict_kwargs=predict_kwargs,
            collector=collector,
            actions=actions,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=concurrency,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        udf_modifying_row_count=False,
    )
    if not update_stats:
        return out
    sync = networks.NormSync(reward)
    try:
        out = out.materialize()
        added = ray.get(collector.added.remote())
    finally:
        ray.kill(collector)
    sync.absorb(networks.merge_norm_reports(sync.synced, added))
    return out


def relabel_in_driver(
    ds: ray.data.Dataset,
    relabel: BatchRelabeler,
    batch_size: int,
) -> ray.data.Dataset:
    """The ``"local"`` engine on a Dataset: batches pulled into this process, relabeled
    here, put back in blocks of about :data:`BLOCK_BYTES`; a materialized Dataset.
    The caller merges statistics (``relabel.merge_into``) once this returned.
    """
    refs: list[ray.ObjectRef] = []
    pending: list[pa.Table] = []
    size = 0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        if not batch.num_rows:
            continue
        pending.append(relabel(batch))
        size += pending[-1].nbytes
        if size >= BLOCK_BYTES:
            refs.append(ray.put(pa.concat_tables(pending)))
            pending, size = [], 0
    if pending or not refs:
        refs.append(ray.put(pa.concat_tables(pending) if pending else pa.table({})))
    return ray.data.from_arrow_refs(refs)


__all__ = ["BLOCK_BYTES", "relabel_in_driver", "relabel_with_actors"]
