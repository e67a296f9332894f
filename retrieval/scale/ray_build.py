"""Embedding on Ray actors (DESIGN §11): one actor per GPU (or per CPU slot without GPUs), each holding
the model and its own copy of the corpus reader; the planned input positions are split into tasks of
``task_rows`` consecutive positions, mapped over an ``ActorPool`` in order, and the driver commits the
returned batches exactly as a single-process build does (``store.indexer``): the driver alone writes
the folder and the manifest, so a resume is a rerun (the plan leaves out what is committed).

Actors are restarted when they die (``max_restarts=-1``) and the task they held is retried
(``max_task_retries``): a lost actor costs its task's work, never an item. Embeddings come back
through Ray's object store as float32, the same arrays a local build embeds, so the folder equals the
single-process one.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np

from ..corpus import CorpusReader
from ..embed import ClipModel
from ..store.indexer import Embedded, local_batches

log = logging.getLogger("retrieval.ray")
MAX_TASK_ROWS = 4096
TASKS_PER_ACTOR = 4   # small enough tasks that every actor gets work, and a lost task costs little
TASK_RETRIES = 3


def split_positions(positions: np.ndarray, task_rows: int) -> list[np.ndarray]:
    """Consecutive runs of at most ``task_rows`` input positions (pure)."""
    if task_rows <= 0:
        raise ValueError(f"task_rows must be positive, got {task_rows}")
    positions = np.asarray(positions, np.int64)
    return [positions[i:i + task_rows] for i in range(0, len(positions), task_rows)]


def task_rows_for(total: int, actors: int, batch_size: int, most: int = MAX_TASK_ROWS) -> int:
    """Inputs per task (pure): about TASKS_PER_ACTOR tasks per actor, whole batches, at most ``most``."""
    per = -(-max(total, 1) // (TASKS_PER_ACTOR * max(actors, 1)))
    per = -(-per // batch_size) * batch_size
    return max(batch_size, min(per, most))


def actor_plan(cluster_gpus: float, cluster_cpus: float, actors: Optional[int] = None) -> tuple[int, dict]:
    """(number of embedding actors, each one's Ray resources) for a cluster (pure): one actor per
    whole GPU when there are GPUs, else one per CPU (at least one); ``actors`` caps or sets it."""
    if cluster_gpus >= 1:
        n = int(cluster_gpus)
        res = {"num_gpus": 1, "num_cpus": 0}
    else:
        n = max(1, int(cluster_cpus))
        res = {"num_cpus": 1}
    if actors is not None:
        if actors <= 0:
            raise ValueError(f"actors must be positive, got {actors}")
        n = min(n, actors) if cluster_gpus >= 1 else actors
    return n, res


class _Embedder:
    """The actor: loads the model once, embeds task after task."""

    def __init__(self, identity: dict, reader: CorpusReader, settings: dict):
        from ..embed import load_recorded_model

        self.clip = load_recorded_model(identity, "auto")
        self.reader, self.settings = reader, settings

    def embed(self, positions: np.ndarray) -> list[Embedded]:
        return list(local_batches(self.reader, self.clip, self.settings, positions))

    def pid(self) -> int:
        import os

        return os.getpid()


def all_positions(reader: CorpusReader) -> np.ndarray:
    """Every input position of ``reader`` (a listing, no decoding)."""
    return np.fromiter((e.pos for e in reader.entries(lambda pos: False)), np.int64)


class RayBatches:
    """A ``store.indexer.Source`` over a Ray cluster: ``address`` None or 'local' starts a local one
    (stopped at the end), else connects (e.g. 'auto' or 'ray://host:10001')."""

    def __init__(self, address: Optional[str] = None, actors: Optional[int] = None,
                 task_rows: Optional[int] = None, init_kw: Optional[dict] = None):
        self.address, self.actors, self.task_rows = address, actors, task_rows
        self.init_kw = init_kw or {}
        self.pool_actors: list = []

    def __call__(self, reader: CorpusReader, clip: ClipModel, settings: dict,
                 positions: Optional[np.ndarray]) -> Iterator[Embedded]:
        import ray
        from ray.util import ActorPool

        started = not ray.is_initialized()
        if started:
            local = self.address in (None, "local")
            ray.init(**({} if local else {"address": self.address}), include_dashboard=False,
                     log_to_driver=False, **self.init_kw)
        try:
            todo = all_positions(reader) if positions is None else np.asarray(positions, np.int64)
            if not len(todo):
                return
            res = ray.cluster_resources()
            n, resources = actor_plan(res.get("GPU", 0), res.get("CPU", 1), self.actors)
            tasks = split_positions(todo, self.task_rows or task_rows_for(len(todo), n, settings["batch_size"]))
            n = min(n, len(tasks))
            actor_cls = ray.remote(max_restarts=-1, max_task_retries=TASK_RETRIES, **resources)(_Embedder)
            inner = {**settings, "workers": 0}  # the actors are the parallelism
            self.pool_actors = [actor_cls.remote(clip.identity, reader, inner) for _ in range(n)]
            log.info("embedding %d tasks on %d Ray actors (%s each)", len(tasks), n, resources)
            pool = ActorPool(self.pool_actors)
            for batches in pool.map(lambda a, pos: a.embed.remote(pos), tasks):
                yield from batches
        finally:
            for a in self.pool_actors:
                ray.kill(a)
            self.pool_actors = []
            if started:
                ray.shutdown()
