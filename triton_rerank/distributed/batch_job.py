"""A batch job: re-rank a large query set with Ray Data, ``(D, I)`` written per block.

:func:`rerank_dataset` maps the blocks of a Ray Dataset of ``(id, vector)`` queries
through :class:`~triton_rerank.distributed.serving.ShardedSearch` (``map_batches`` with
a pool of workers that share the running shard actors). Each batch's results are written
to ``out_dir/results-<first query id>.npz`` (``ids [b]``, ``D [b, k]``, ``I [b, k]``,
through a temporary file and a rename: a retried batch overwrites its own file, never
another's) and returned as the rows of the output dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .build_worker import save_arrays
from .serving import ShardedSearch


class _RerankBatches:
    """The ``map_batches`` callable: one per pool worker, attached to the shard actors."""

    def __init__(self, state: tuple, k: int, out_dir: str):
        self.search = ShardedSearch.attach(state)
        self.k = k
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict) -> dict:
        ids = np.asarray(batch["id"], dtype=np.int64)
        queries = np.stack(batch["vector"]).astype(np.float32)
        distances, labels = self.search.search(queries, self.k)
        save_arrays(
            self.out_dir / f"results-{int(ids[0]):012d}.npz", ids=ids, D=distances, I=labels
        )
        return {"id": ids, "D": distances, "I": labels}


def rerank_dataset(
    dataset,
    search: ShardedSearch,
    k: int,
    out_dir,
    *,
    batch_size: int = 1024,
    concurrency: int = 1,
):
    """Re-rank every query of ``dataset`` (columns ``id`` int, ``vector`` ``[d]``).

    Args:
        dataset: a Ray Dataset of queries.
        search: the running sharded search whose actors the job uses.
        k: results per query.
        out_dir: folder for the per-batch result files (every node must see it).
        batch_size: queries per batch.
        concurrency: pool workers scoring batches at a time.

    Returns:
        The materialised output dataset (columns ``id``, ``D``, ``I``).
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return dataset.map_batches(
        _RerankBatches,
        fn_constructor_args=(search.state, k, str(out_dir)),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=0,
    ).materialize()
