"""Sharded serving on Ray (DESIGN §11): the shards of an index folder are split into ``groups``
(shard id modulo groups, so shards a sync appends join a group without re-planning), each group
opened by ``replicas`` Ray actors (memory-mapped, or on the actor's GPU through the ``auto``
backend). The process that serves HTTP keeps the manifest, row masks, metadata and offsets; its
search engine (:class:`FanOut`) sends each query batch to one replica of every group, which runs the
in-process engine over its shards (the same selection: live rows, captions, ``where``; the same
exact offsets search), and merges the groups' top-k by score over global ids. Every rerank method
then runs unchanged on the router.

A replica that dies or does not answer within ``timeout_s`` is replaced by the group's next replica;
when none answers the group's shards are reported missing (``query.partial``) and the answer holds
the other groups' results, flagged partial by the server. Dead actors are restarted by Ray.
The actors read the folder at the same path, so the folder must be on storage every node sees.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

import numpy as np

from ..query.topk import merge_topk
from ..query.engine import Offset
from ..query.partial import report_missing

log = logging.getLogger("retrieval.ray")
TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0


def shard_group(shard_id: int, groups: int) -> int:
    """The group serving shard ``shard_id`` (pure)."""
    return int(shard_id) % groups


def serve_plan(groups: int, replicas: int, cluster_gpus: float, cluster_cpus: float, actors: Optional[int] = None) -> dict:
    """Each serving actor's Ray resources (pure): a whole GPU when the cluster has one per actor,
    else an equal share of the CPUs (at most one each, rounded down so the shares fit). ``actors``:
    how many actors the whole server starts (every served index's), default ``groups * replicas``."""
    if groups <= 0 or replicas <= 0:
        raise ValueError(f"groups and replicas must be positive, got {groups} and {replicas}")
    n = max(actors or 0, groups * replicas)
    if cluster_gpus >= n:
        return {"num_gpus": 1, "num_cpus": 0}
    return {"num_cpus": math.floor(min(1.0, max(cluster_cpus, 0.0) / n) * 10_000) / 10_000}


class _ShardGroup:
    """The actor: one group's shards of the folder, opened once, searched by the in-process engine."""

    def __init__(self, folder: str, group: int, groups: int, backend: str, mmap: Optional[bool],
                 search_params: Optional[str]):
        from ..query.index import Index

        self.index = Index(folder, backend=backend, mmap=mmap, search_params=search_params, warm=True,
                           shard_filter=lambda s: shard_group(s["id"], groups) == group)   # its files only

    def ready(self) -> int:
        return self.index.snapshot.generation

    def search(self, generation: int, modality: str, q: np.ndarray, k: int, offset: Optional[tuple],
               spec: tuple) -> tuple:
        """(generation searched, scores, global ids) of this group's top-k; the folder's newer
        manifest is loaded first when the router is ahead."""
        if generation > self.index.snapshot.generation:
            self.index.refresh()
        snap = self.index.snapshot
        if not snap.shard_set.shards:
            return snap.generation, np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        s, ids = snap.searcher.engine(modality).search(q, k, None if offset is None else Offset(*offset),
                                                       snap.selection(*spec))
        return snap.generation, s, ids

    def pid(self) -> int:
        import os

        return os.getpid()


def _lost() -> tuple:
    """The Ray errors that mean "this replica did not answer" (another replica may)."""
    from ray import exceptions as rx

    return tuple(getattr(rx, n) for n in ("RayActorError", "ActorUnavailableError", "GetTimeoutError",
                                          "ObjectLostError", "OwnerDiedError") if hasattr(rx, n))


class RayShardGroups:
    """``replicas`` actors for each of ``groups`` shard groups of ``folder``. ``address`` None or
    'local' starts a local Ray cluster (stopped by ``close``), else joins one ('auto', 'ray://…')."""

    def __init__(self, folder: str, groups: int = 2, replicas: int = 1, address: Optional[str] = None,
                 backend: str = "auto", mmap: Optional[bool] = None, search_params: Optional[str] = None,
                 timeout_s: float = TIMEOUT_S, init_kw: Optional[dict] = None, actors: Optional[int] = None,
                 start_timeout_s: float = START_TIMEOUT_S):
        """``actors``: how many serving actors the whole server starts (all its indexes'), so each
        gets a share of the cluster that leaves room for the others; ``start_timeout_s``: how long
        to wait for every actor to be placed and open its shards before giving up in one line."""
        import ray

        self.groups, self.replicas, self.timeout_s = groups, replicas, timeout_s
        self.started = not ray.is_initialized()
        if self.started:
            local = address in (None, "local")
            ray.init(**({} if local else {"address": address}), include_dashboard=False, log_to_driver=False,
                     **(init_kw or {}))
        res = ray.cluster_resources()
        resources = serve_plan(groups, replicas, res.get("GPU", 0), res.get("CPU", 1), actors)
        cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4, **resources)(_ShardGroup)
        spread = {"scheduling_strategy": "SPREAD"}
        self.actors = [[cls.options(**spread).remote(str(folder), g, groups, backend, mmap, search_params)
                        for _ in range(replicas)] for g in range(groups)]
        self._turn = [0] * groups
        try:
            self._wait_ready(folder, resources, start_timeout_s)
        except BaseException:  # a timeout, an actor's own error, Ctrl-C: no actor is left behind
            self.close()
            raise
        log.info("serving %s on %d shard groups x %d replicas (%s each)", folder, groups, replicas, resources)

    def _wait_ready(self, folder: str, resources: dict, start_timeout_s: float) -> None:
        """Wait for every actor to open its shards, in short waits (Ctrl-C stops it between them);
        RetrievalError naming what could not be placed when ``start_timeout_s`` passes first."""
        import ray

        from ..errors import RetrievalError

        pending = [a.ready.remote() for row in self.actors for a in row]
        deadline = time.monotonic() + start_timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                free = ray.available_resources()
                raise RetrievalError(
                    f"{len(pending)} of {self.groups * self.replicas} Ray actors for {folder} were not placed within "
                    f"{start_timeout_s:.0f} s: each asks for {resources}, the cluster has "
                    f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU free; serve fewer indexes, "
                    f"shard groups or replicas, or add nodes")
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=min(0.5, left))
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise _cause(e) from None

    def engines(self, shards, biases, modality: str, backend: str) -> "FanOut":
        """The searcher's engine factory (``Index.use_engines``)."""
        return FanOut(self, shards, biases, modality)

    def search(self, generation: int, modality: str, q: np.ndarray, k: int, offset: Optional[tuple],
               spec: tuple) -> tuple[list, list[int], set]:
        """(each answering group's (scores, ids), the groups none answered, generations seen)."""
        import ray

        lost = _lost()
        q_ref = ray.put(q)
        tried = {g: [] for g in range(self.groups)}
        refs: dict = {}
        for g in range(self.groups):
            refs[self._call(g, tried[g], generation, modality, q_ref, k, offset, spec)] = g
        parts, failed, gens = [], [], set()
        deadline = {ref: time.monotonic() + self.timeout_s for ref in refs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, min(deadline.values()) - time.monotonic()))
            now = time.monotonic()
            finished = done or [r for r in refs if deadline[r] <= now]
            for ref in finished:
                g = refs.pop(ref)
                deadline.pop(ref)
                try:
                    if ref not in done:
                        ray.cancel(ref, force=False)
                        raise ray.exceptions.GetTimeoutError(f"group {g} did not answer in {self.timeout_s} s")
                    gen, s, ids = ray.get(ref)
                    parts.append((s, ids))
                    gens.add(gen)
                except lost as e:
                    log.warning("shard group %d replica %d failed (%s)", g, tried[g][-1], type(e).__name__)
                    if len(tried[g]) < self.replicas:
                        nxt = self._call(g, tried[g], generation, modality, q_ref, k, offset, spec)
                        refs[nxt], deadline[nxt] = g, time.monotonic() + self.timeout_s
                    else:
                        failed.append(g)
                except ray.exceptions.RayTaskError as e:
                    raise _cause(e) from None
        return parts, failed, gens

    def _call(self, g: int, tried: list, *args):
        """Send a search to group ``g``'s next replica not tried yet (round robin across calls)."""
        r = self._turn[g]
        while r in tried:
            r = (r + 1) % self.replicas
        self._turn[g] = (r + 1) % self.replicas
        tried.append(r)
        return self.actors[g][r].search.remote(*args)

    def close(self) -> None:
        import ray

        for row in self.actors:
            for a in row:
                ray.kill(a, no_restart=True)
        self.actors = []
        if self.started and ray.is_initialized():
            ray.shutdown()


def _cause(e: Exception) -> Exception:
    """The exception an actor raised (a ValueError stays a ValueError for the server's 400)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, Exception) else e


class FanOut:
    """One modality's engine on the router: the ``query.engine.ModalitySearch`` interface the rerank
    methods use, each search answered by the remote shard groups."""

    def __init__(self, groups: RayShardGroups, shards, biases, modality: str):
        self.groups, self.shards, self.biases, self.modality = groups, shards, biases, modality

    def search(self, q: np.ndarray, k: int, offset: Optional[Offset] = None, selection=None):
        """Top-k (scores, global ids) over every group (see ``ModalitySearch.search``)."""
        total = len(self.shards) if selection is None else selection.total
        want = min(k, total)
        if want == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        spec = selection.spec if selection is not None and selection.spec else (self.modality, None, False)
        off = None if offset is None else (offset.method, float(offset.scale))
        generation = selection.generation if selection is not None and selection.generation is not None \
            else int(self.shards.manifest.get("generation", 0))
        parts, failed, gens = self.groups.search(generation, self.modality, q, want, off, spec)
        if gens - {generation}:  # a replica restarted on a newer manifest: keep only ids this router knows
            log.warning("shard groups answered from generations %s, the router holds %d", sorted(gens), generation)
            parts = [(np.where(known, s, -np.inf), np.where(known, ids, -1))
                     for s, ids in parts for known in [self.shards.contains(ids)[0].reshape(ids.shape)]]
        if failed:
            report_missing(s["id"] for s in self.shards.shards if shard_group(s["id"], self.groups.groups) in failed)
        if not parts:
            return np.full((len(q), want), -np.inf, np.float32), np.full((len(q), want), -1, np.int64)
        s, ids = merge_topk(parts, np.zeros(len(parts), np.int64), want)
        if s.shape[1] < want:  # every group had fewer rows than k
            pad = want - s.shape[1]
            s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return s, ids

    def item_offsets(self, method: str, ids: np.ndarray) -> np.ndarray:
        return self.biases.gather(method, self.modality, ids)


def serve_on_ray(index, groups: int = 2, replicas: int = 1, address: Optional[str] = None,
                 backend: str = "auto", **kw) -> RayShardGroups:
    """Start the shard-group actors of ``index``'s folder and route its searches through them;
    ``close()`` the returned groups to stop. ``backend`` is picked on each actor ('auto': its GPU
    through torch or faiss when it has one); mmap and search parameters are the index's own. With
    several indexes on one cluster, pass ``actors`` = all of their actors (see ``RayShardGroups``)."""
    opts = {**index.open_options, "backend": backend}
    pool = RayShardGroups(str(index.folder), groups, replicas, address, **opts, **kw)
    index.use_engines(pool.engines)
    return pool
