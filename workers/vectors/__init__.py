"""Vector search: the numeric core and the per-tenant retrieval index.

* :mod:`~workers.vectors.matrix` — :class:`VectorMatrix`, batched top-k cosine over growable unit rows (brute force,
  then inverted lists); shared by the retrieval index and the semantic cache's mirror.
* :mod:`~workers.vectors.storage` — the chunked row storage and the inverted lists the matrix keeps.
* :mod:`~workers.vectors.quantise` — int8 codes, sign bits and their Hamming distance, spherical k-means.
* :mod:`~workers.vectors.protocol` — the :class:`VectorIndex` protocol retrieval works against.
* :mod:`~workers.vectors.chunks` and :mod:`~workers.vectors.visibility` — what is indexed and who may see it.
* :mod:`~workers.vectors.index` — :class:`MemoryVectorIndex`, the index in process memory, one matrix per tenant.
"""
