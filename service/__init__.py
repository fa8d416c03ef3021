"""unirank's online service: FastAPI in front, onnxruntime and Redis behind.

The request path reads top down, one package a layer; each imports only the layers below it
(`make lint` holds it: the import contracts in pyproject.toml):

    api       HTTP only: routes, request parsing, the one error-to-HTTP mapping, the OpenAPI document
    state     the app's composition root: settings, Redis, the fleet of models, the logs (one per worker)
    ranking   one /rank request: routing, the ranker (cache -> retrieval -> scoring -> top k), shadow, fleet
    model     what a loaded bundle can do: context, retrieval, features, micro-batching, onnxruntime
    store     Redis: the client, auto-pipelining, breaker, cache, events, impressions, the control document
    core      settings, the error kinds, request bodies, the answer type, the routing document
    ops       process-level plumbing: metrics, the garbage collector's tuning, draining

`model` and `store` are independent of each other. Nothing imports `api`.
"""
