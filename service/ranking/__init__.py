"""One ranking request: the routing picks the model (or two, interleaved), the ranker answers from the
cache or through retrieval and scoring, the shadow gets a copy; the fleet holds the loaded models.
May import `service.model`, `service.store`, `service.core` and `service.ops`; never `service.api`.
"""
