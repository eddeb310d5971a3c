"""Past one machine: the inductive database graph built and served on a Ray cluster.

* :func:`~triton_rerank.distributed.build.build_sharded_graph`: the distributed build
  (one actor per database shard), written as a sharded graph
  (:mod:`~triton_rerank.distributed.graph_shards`);
* :class:`~triton_rerank.distributed.serving.ShardedSearch`: sharded serving (shortlists
  scattered to the shards, candidates' frozen rows gathered, scored as single-host
  inductive mode), FAISS-style ``(D, I)``;
* :func:`~triton_rerank.distributed.batch_job.rerank_dataset`: a Ray Data batch job.

Needs the ``ray`` extra; ``ray`` is imported only when these are used. See
docs/distributed.md.
"""
