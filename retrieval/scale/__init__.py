"""Scale-out on Ray (optional extra ``pip install '.[ray]'``; DESIGN §11): ``RayBatches`` embeds a
build's planned positions on Ray actors while this process writes the folder; ``serve_on_ray``
spreads an opened index's shard groups over Ray actors and fans its searches out to them. Ray is
imported only when used; the engine without Ray is unchanged."""
from .ray_build import RayBatches, actor_plan, split_positions
from .ray_serve import RayShardGroups, serve_on_ray, serve_plan, shard_group

__all__ = ["RayBatches", "RayShardGroups", "actor_plan", "serve_on_ray", "serve_plan", "shard_group",
           "split_positions"]
