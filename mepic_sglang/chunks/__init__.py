"""MEPIC's core, plain Python and torch (no SGLang): chunk marking, canonical page layout, plans,
the chunk store and the chunk manager that owns its accounting.

    segments, chat_parts   what a client marks as a chunk (mepic_segments, chat parts)
    layout                 the canonical page-aligned layout; RegionTable and its wire codec
    recompute              which head of a reused chunk is recomputed (ABC + registry)
    plan                   per-request plan: served vs computed positions, extend layout
    store                  shared chunk entries in the KV page pool (refs, LRU, page states)
    manager                ChunkManager: the typed API the SGLang hooks call (acquire, extend,
                           publish, release, evict, check_integrity)
"""
