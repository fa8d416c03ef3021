"""A loaded bundle: manifest, feature tables, the onnxruntime session, retrieval and the runtime catalog.

Contract: `LoadedBundle.load(path, settings)` raises `BundleMissing` while the directory holds no
bundle, and anything else when it holds a broken one; a loaded bundle is warm (first calls made), and
`check()` scores one real request of each of its tasks (a bundle that cannot is refused).
`score(job)` scores one request's candidates, through the micro-batcher when it is on (concurrent
requests then share the feature encoding and one onnxruntime call: `score_batch`); `request_scope()`
brackets one request so the batcher knows who may still join a batch.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.core.schemas import RankRequest
from service.core.settings import Settings
from service.model.batching import MicroBatcher, concatenate, split
from service.model.bundle_store import BundleInvalid, read_manifest
from service.model.catalog import RuntimeCatalog
from service.model.context import RequestContext, build_request_context
from service.model.display import Entities
from service.model.entity_side import EntitySide
from service.model.features import ScoringJob, ServingFeatures
from service.model.retrieval import Retriever
from service.model.scoring import Scorer
from service.model.text_encoder import TextEncoder
from unirank.core.context import UnifiedContext
from unirank.core.features import ENTITY_SIDE_TABLE, graph_input_names
from unirank.core.spec import ModelSpec
from unirank.core.tables import FeatureTables
from unirank.core.vocab import Level, Task

log = logging.getLogger("unirank.bundle")


RANK_OUTPUTS = {"click": "score", "play": "play"}  # ranking score -> the model's output


@dataclass
class LoadedBundle:
    path: Path
    manifest: dict
    tables: FeatureTables
    scorer: Scorer
    retriever: Retriever
    features: ServingFeatures
    catalog: RuntimeCatalog
    spec: ModelSpec
    entity_side: EntitySide | None = None  # the graph holds the entity side (its table, for runtime entities)
    batcher: MicroBatcher | None = None
    entities: Entities = field(init=False)

    def __post_init__(self) -> None:
        self.entities = Entities(self.tables, self.catalog)

    async def score(self, job: ScoringJob) -> np.ndarray:
        """The job's scores, through the micro-batcher when it is on, else in one call right here."""
        if self.batcher is not None:
            return await self.batcher.score(job)
        return self.score_batch([job])[0]

    def score_batch(self, jobs: list[ScoringJob]) -> list[np.ndarray]:
        """Each job's scores from one onnxruntime call: the features of each personalization level's jobs
        encoded together, the levels' inputs concatenated. Each job records the batch's feature and
        inference times."""
        started = time.perf_counter()
        if len(jobs) == 1:
            order, inputs = [0], self.features.batch_inputs(jobs)
        else:
            levels: dict[str, list[int]] = {}
            for i, job in enumerate(jobs):
                levels.setdefault(job.ctx.level, []).append(i)
            order = [i for group in levels.values() for i in group]
            parts = [self.features.batch_inputs([jobs[i] for i in group]) for group in levels.values()]
            inputs = parts[0] if len(parts) == 1 else concatenate(parts)[0]
        encoded = time.perf_counter()
        scores = self.score_inputs(inputs)
        scored = time.perf_counter()
        out: list[np.ndarray] = [scores] * len(jobs)
        if len(jobs) > 1:
            for i, part in zip(order, split(scores, [len(jobs[i].candidates) for i in order]), strict=True):
                out[i] = part
        for job in jobs:
            job.features_s, job.inference_s = encoded - started, scored - encoded
        return out

    def score_inputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The scores of model inputs (`ServingFeatures`): one onnxruntime call, fed the entity-side table
        that covers the entities added at run time when there are any (else the graph's own serves)."""
        if self.entity_side is not None:
            table = self.entity_side.override(self.catalog.generation)
            if table is not None:
                inputs = inputs | {ENTITY_SIDE_TABLE: table}
        return self.scorer.score(inputs)

    def request_scope(self) -> AbstractContextManager:
        """Brackets one request that may call `score` (the micro-batcher waits only for such requests)."""
        return self.batcher.request() if self.batcher is not None else nullcontext()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            # the batcher runs this bundle's score_batch: a cycle the collector would have to find (and
            # loaded models are frozen out of its scans, service.ops.heap); a request still in flight scores alone
            self.batcher = None

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def cache_version(self) -> str:
        """What cached rankings depend on besides the request: the model, and the runtime catalog."""
        generation = self.catalog.generation
        return f"{self.version}+{generation}" if generation else self.version

    @property
    def level(self) -> str:
        return self.manifest["personalization"]

    @property
    def impute(self) -> bool:
        return self.manifest.get("train_config", {}).get("impute", True)

    def describe(self) -> dict:
        """What GET /model shows: the manifest's summary and how this worker runs the model."""
        keys = (
            "version",
            "content_hash",
            "created",
            "personalization",
            "tasks",
            "features",
            "imputation",
            "metrics",
            "training_data",
        )
        batcher = self.batcher
        batching = {"on": batcher is not None}
        if batcher is not None:
            batching |= {
                "window_ms": batcher.window_s * 1000,
                "max_candidates": batcher.max_candidates,
                "batches": batcher.batches,
                "requests": batcher.requests,
            }
        return {k: self.manifest.get(k) for k in keys} | {
            "execution_provider": self.scorer.provider,
            "device": self.scorer.device,
            "io_binding": self.scorer.io_binding,
            "micro_batching": batching,
            "runtime_catalog": {
                "entities": self.catalog.size,
                "generation": self.catalog.generation,
                "text_encoder": self.catalog.text_encoder is not None,
            },
            "rank_by": next(k for k, v in RANK_OUTPUTS.items() if v == self.scorer.output),
            "bundle": str(self.path),
        }

    @classmethod
    def load(cls, path: Path | str, settings: Settings) -> LoadedBundle:
        path = Path(path)
        manifest = read_manifest(path)
        tables = FeatureTables.load(path / "tables")
        spec = ModelSpec.from_dict(manifest["model"])
        side = manifest["onnx"].get("entity_side")
        entity_side = EntitySide(path / side["file"], side["rows"], tables) if side else None
        text_encoder = None
        if manifest.get("text_encoder") and tables.text_projection is not None:
            text_encoder = TextEncoder(
                path, manifest["text_encoder"], tables.text_projection, settings.intra_op_threads
            )
        retriever = Retriever(
            tables, settings.retrieval_limit, text_encoder.embed_query if text_encoder is not None else None
        )
        bundle = cls(
            path=path,
            manifest=manifest,
            tables=tables,
            scorer=Scorer(
                path / manifest["onnx"]["file"],
                settings.execution_provider,
                settings.intra_op_threads,
                settings.cuda_io_binding,
                RANK_OUTPUTS[settings.rank_by or manifest.get("rank_by", "click")],
                quiet=entity_side is not None,
            ),
            retriever=retriever,
            features=ServingFeatures(tables, spec, entity_in_graph=entity_side is not None),
            catalog=RuntimeCatalog(tables, retriever, text_encoder),
            spec=spec,
            entity_side=entity_side,
        )
        bundle._warm_up()
        gpu = bundle.scorer.device == "cuda"
        if settings.micro_batch is not False:
            # the window on the CPU too: under load the requests of a closed loop of clients reach the scorer
            # spread over about a millisecond, so the requests of one event-loop iteration were half a batch
            # (rank_200 at concurrency 8: 4.0 requests a call, 795 us of server CPU each; with the 1 ms
            # window 7.1 and 745 us; `python -m loadtest.server_cpu --scenario rank_200`). A lone request
            # in flight still pays no window.
            window = settings.micro_batch_window_ms
            bundle.batcher = MicroBatcher(
                bundle.score_batch,
                window / 1000,
                settings.micro_batch_max_candidates,
                size=lambda job: len(job.candidates),
                in_thread=gpu,
            )
        batching = bundle.batcher is not None
        log.info(
            "bundle %s loaded from %s (personalization %s, %s on %s, micro-batching %s)",
            bundle.version,
            path,
            bundle.level,
            bundle.scorer.provider,
            bundle.scorer.device,
            "on" if batching else "off",
        )
        return bundle

    def check(self) -> None:
        """Raises BundleInvalid unless the ONNX graph takes what the manifest says and one real request of
        each of the bundle's tasks scores (finite probabilities, one per candidate). Warms every path up."""
        names = self.spec.input_names()
        expected = set(graph_input_names(names) if self.entity_side is not None else names)
        graph = set(self.scorer.input_names)
        if graph != expected:
            raise BundleInvalid(f"model.onnx takes {sorted(graph)}, the manifest's model spec says {sorted(expected)}")
        tables = self.tables
        first = next((i for i in range(1, tables.n_entities + 1) if tables.norm_titles[i]), 1)
        for task in self.manifest.get("tasks", []):
            request = RankRequest(
                task=task,
                country=tables.countries[1] if len(tables.countries) > 1 else "US",
                user_id=tables.user_ids[1] if len(tables.user_ids) > 1 else None,
                query=tables.norm_titles[first][:3] if task == Task.SEARCH else None,
                source_entity_id=tables.entity_ids[first] if task == Task.MORE_LIKE_THIS else None,
            )
            ctx = build_request_context(request, tables, self.level, self.impute)
            candidates = self.retriever.candidates(ctx)
            if candidates.size == 0:
                candidates = np.arange(1, min(50, tables.n_entities) + 1)
            history = self.features.history([], ctx.user) if ctx.level == Level.FULL else None
            scores = self.score_inputs(self.features.inputs(ctx, candidates, history))
            if (
                scores.shape != (len(candidates),)
                or not np.all(np.isfinite(scores))
                or scores.min() < 0
                or scores.max() > 1
            ):
                raise BundleInvalid(
                    f"a {task} request did not score: {len(candidates)} candidates gave {scores!r:.200}"
                )

    def _warm_up(self) -> None:
        """First calls allocate and build the title index; do them before traffic arrives."""
        self.tables.title_index  # noqa: B018 (builds it)
        ctx = RequestContext(UnifiedContext("search", None, None, "a", None), "none", 0, 0, 0, 0)
        candidates = np.arange(1, min(200, self.tables.n_entities) + 1)
        for _ in range(3):
            self.score_inputs(self.features.inputs(ctx, candidates))
