"""The entity-side table of a bundle whose graph holds it (`model_export.entity_graph`), for entities added
at run time.

Contract: the graph gathers each candidate's row of its `entity_side` initializer (the entities it was
exported with). Once the runtime catalog holds entities past those, `override(generation)` gives the
table for every entity of the feature tables — each row computed by the bundle's `entity_side.onnx` from
the entity's model id (0, the unknown entity, for one added at run time), kind and genres, as the
export computed the initializer — to feed in its place; None while there are none. The table is built
once per catalog generation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from unirank.core.features import entity_side_inputs
from unirank.core.tables import FeatureTables


class EntitySide:
    def __init__(self, path: Path | str, rows: int, tables: FeatureTables):
        """path: the bundle's entity_side.onnx; rows: the initializer's (the manifest's)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.rows = rows
        self.tables = tables
        self._table: np.ndarray | None = None
        self._generation: str | None = None

    def rows_of(self, entities: np.ndarray) -> np.ndarray:
        """The table's rows of `entities` (indices into the feature tables)."""
        inputs = entity_side_inputs(self.tables, entities, self.tables.n_model_entities)
        return self.session.run(["rows"], inputs)[0]

    def override(self, generation: str) -> np.ndarray | None:
        t = self.tables
        if t.n_entities < self.rows:  # every entity is one the graph's table holds
            return None
        if self._table is None or self._generation != generation or len(self._table) != t.n_entities + 1:
            self._table = np.ascontiguousarray(self.rows_of(np.arange(t.n_entities + 1)))
            self._generation = generation
        return self._table
