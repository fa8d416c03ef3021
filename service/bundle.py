"""Loading a bundle: manifest, feature tables, the onnxruntime session and the retrieval indices."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.tables import FeatureTables
from service.batching import MicroBatcher
from service.catalog import RuntimeCatalog
from service.features import ServingFeatures
from service.retrieval import Retriever
from service.scoring import Scorer
from service.settings import Settings
from service.text_encoder import TextEncoder

log = logging.getLogger("unirank.bundle")


RANK_OUTPUTS = {"click": "score", "play": "play"}  # ranking score -> the model's output


class BundleMissing(FileNotFoundError):
    pass


@dataclass
class LoadedBundle:
    path: Path
    manifest: dict
    tables: FeatureTables
    scorer: Scorer
    retriever: Retriever
    features: ServingFeatures
    catalog: RuntimeCatalog
    batcher: MicroBatcher | None = None

    async def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Scores through the micro-batcher when it is on, else in one call right here."""
        if self.batcher is not None:
            return await self.batcher.score(inputs)
        return self.scorer.score(inputs)

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

    @classmethod
    def load(cls, path: Path | str, settings: Settings) -> LoadedBundle:
        path = Path(path)
        if not (path / "manifest.json").is_file() or not (path / "model.onnx").is_file():
            raise BundleMissing(f"no bundle at {path} (manifest.json and model.onnx expected)")
        manifest = json.loads((path / "manifest.json").read_text())
        tables = FeatureTables.load(path / "tables")
        spec = manifest["model"]
        retriever = Retriever(tables, settings.retrieval_limit)
        text_encoder = None
        if manifest.get("text_encoder") and tables.text_projection is not None:
            text_encoder = TextEncoder(path, manifest["text_encoder"], tables.text_projection, settings.intra_op_threads)
        bundle = cls(
            path=path,
            manifest=manifest,
            tables=tables,
            scorer=Scorer(path / manifest["onnx"]["file"], settings.execution_provider, settings.intra_op_threads,
                          settings.cuda_io_binding, RANK_OUTPUTS[settings.rank_by or manifest.get("rank_by", "click")]),
            retriever=retriever,
            features=ServingFeatures(tables, manifest["personalization"], spec.get("history_length", 20),
                                     spec.get("history_encoder", False), spec.get("text_features", False)),
            catalog=RuntimeCatalog(tables, retriever, text_encoder),
        )
        bundle._warm_up()
        batching = settings.micro_batch if settings.micro_batch is not None else bundle.scorer.device == "cuda"
        if batching:
            bundle.batcher = MicroBatcher(bundle.scorer.score, settings.micro_batch_window_ms / 1000, settings.micro_batch_max_candidates)
        log.info("bundle %s loaded from %s (personalization %s, %s on %s, micro-batching %s)", bundle.version, path,
                 bundle.level, bundle.scorer.provider, bundle.scorer.device, "on" if batching else "off")  # fmt: skip
        return bundle

    def _warm_up(self) -> None:
        """First calls allocate and build the title index; do them before traffic arrives."""
        from model_export.context import UnifiedContext
        from service.context import RequestContext

        self.tables.title_index  # noqa: B018 (builds it)
        rc = RequestContext(UnifiedContext("search", None, None, "a", None), "none", 0, 0, 0, 0)
        cand = np.arange(1, min(200, self.tables.n_entities) + 1)
        for _ in range(3):
            self.scorer.score(self.features.inputs(rc, cand))
