"""The reference a user would write first, for the benchmark's naive_200 scenario: FastAPI, the torch
model in eager mode, the context replicated per candidate, the standard-library json. Same features
(the shared encoder), same weights (the bundle's checkpoint.pt) as the real service."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request, Response

from model_export.model import UnifiedRanker
from unirank.core.context import build_context
from unirank.core.features import INPUT_NAMES, FeatureEncoder
from unirank.core.spec import ModelSpec
from unirank.core.tables import FeatureTables


def create_app() -> FastAPI:
    bundle = Path(os.environ["UNIRANK_BUNDLE"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    tables = FeatureTables.load(bundle / "tables")
    checkpoint = torch.load(bundle / "checkpoint.pt", weights_only=True)
    model = UnifiedRanker(ModelSpec.from_dict(checkpoint["spec"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    torch.set_num_threads(1)
    encoder = FeatureEncoder(tables, manifest["personalization"])
    app = FastAPI()

    @app.post("/rank")
    async def rank(request: Request) -> Response:
        body = json.loads(await request.body())
        ctx = build_context(
            body["task"],
            body.get("country"),
            body.get("user_id"),
            body.get("query"),
            body.get("source_entity_id"),
            tables.title_of,
        )
        ids = body["candidates"]
        cand = encoder.entity_indices(ids)
        contexts = encoder.encode_contexts([ctx] * len(ids))  # one context row per candidate
        inputs = encoder.encode_candidates(contexts, cand, np.arange(len(ids)))
        with torch.no_grad():
            scores = model.logits(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).sigmoid().tolist()
        ranked = sorted(zip(ids, scores, strict=True), key=lambda p: (-p[1], p[0]))[: body.get("k", 20)]
        out = {"items": [{"entity_id": e, "score": s} for e, s in ranked], "task": body["task"]}
        return Response(json.dumps(out), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(json.dumps({"status": "ok"}), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return await healthz()

    return app
