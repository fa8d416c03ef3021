"""The unified context of one /rank request, built with the training code (imputation included),
plus what the service derives from it: indices, the personalization applied and the cache keys.

Contract: `build_request_context` raises `PersonalizationError` when the request asks for more
personalization than the bundle has; cache keys hold everything a cached ranking depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from service.core.schemas import RankRequest
from unirank.core.context import UnifiedContext, build_context, personalization_rank
from unirank.core.tables import FeatureTables
from unirank.core.vocab import Level, Task


class PersonalizationError(ValueError):
    """The request asks for more personalization than the bundle was trained with."""


@dataclass(slots=True)
class RequestContext:
    unified: UnifiedContext
    level: str
    user: int  # user index, 0 = unknown
    cluster: int  # 0 = cold start (or personalization "none")
    country: int  # 0 = unknown bucket
    source: int  # source entity index, 0 = none / unknown

    def at_level(self, level: str) -> RequestContext:
        """The same request at a lower personalization level (without the user at 'cluster' and below)."""
        return replace(self, level=level, user=self.user if level == Level.FULL else 0)

    def cache_key(self, version: str, k: int) -> str:
        """Everything a none/cluster ranking depends on; no user id, so users of a cluster share it."""
        u = self.unified
        source = u.source_entity_id or ""
        return f"ur:rank:{version}:{u.task}:{self.country}:{self.level}:{self.cluster}:{source}:{u.query}:{k}"

    def stage_one_key(self, version: str) -> str:
        u = self.unified
        return f"ur:cand:{version}:{u.task}:{self.country}:{self.cluster}:{u.source_entity_id or ''}:{u.query}"

    @property
    def unknown(self) -> bool:
        """Whether the model lacks something the request names (a user, source or country): a warning."""
        u = self.unified
        return (
            (u.task == Task.SEARCH and not u.query)
            or (bool(u.source_entity_id) and not self.source)
            or (bool(u.user_id) and not self.user)
            or not self.country
        )

    def explain(self) -> dict:
        u = self.unified
        return {
            "task": u.task,
            "query": u.query,
            "query_imputed": u.query_imputed,
            "country": u.country,
            "country_known": self.country > 0,
            "user_id": u.user_id,
            "user_known": self.user > 0,
            "user_cluster": self.cluster,
            "source_entity_id": u.source_entity_id,
            "personalization": self.level,
        }


def build_request_context(
    req: RankRequest, tables: FeatureTables, bundle_level: str, impute: bool = True
) -> RequestContext:
    level = req.personalization or bundle_level
    if personalization_rank(level) > personalization_rank(bundle_level):
        raise PersonalizationError(f"this bundle supports personalization up to '{bundle_level}', not '{level}'")
    unified = build_context(
        req.task, req.country, req.user_id, req.query, req.source_entity_id, tables.title_of, impute
    )
    user = tables.user_index.get(req.user_id, 0) if req.user_id else 0
    rank = personalization_rank(level)
    return RequestContext(
        unified=unified,
        level=level,
        user=user,
        cluster=int(tables.user_cluster[user]) if rank >= 1 else 0,
        country=tables.country_index.get(unified.country, 0),
        source=tables.entity_index.get(unified.source_entity_id, 0) if unified.source_entity_id else 0,
    )
