"""Scale-out on Ray (optional extra ``pip install '.[ray]'``; DESIGN §11): ``RayBatches`` embeds a
build's planned positions on Ray actors while this process writes the folder. Ray is imported only
when used; the engine without Ray is unchanged."""
from .ray_build import RayBatches, actor_plan, split_positions

__all__ = ["RayBatches", "actor_plan", "split_positions"]
