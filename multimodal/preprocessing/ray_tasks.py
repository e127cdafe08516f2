"""Preprocessing shard tasks as Ray tasks on an existing cluster (`tune.address` / RAY_ADDRESS), 1 CPU each.

What the cluster's nodes need, as for tune's trials:
- the project folder at the same absolute path on every node, shared (a network filesystem on a multi-node
  cluster): a task reads the raw files under it and writes its shard file into the stage's output folder there;
- the project's Python environment (same packages). The `multimodal` package itself travels with the job
  (runtime_env `py_modules`: Ray zips the driver's copy), so tasks run the driver's code, not a node's checkout.
  A modality brought with `module:` is imported from the project folder, which Ray puts on the workers' path
  (it adds the driver's working directory, the project root, to their `sys.path`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from multimodal.modalities import register_module
from multimodal.modalities.spec import ModalitySpec
from multimodal.pipeline.ray_cluster import join_ray
from multimodal.pipeline.runtime import go_offline_for
from multimodal.preprocessing.shard_tasks import ShardError, ShardTask, write_shard

logger = logging.getLogger(__name__)


def shard_on_worker(task: ShardTask, root: Path, out_dir: Path, *, modality: str, spec: ModalitySpec,
                    batch_size: int, shard_size: int) -> str:
    """One shard task in a Ray worker: the stage's offline switches and modality plugins, then `write_shard`;
    returns the id of the node it ran on."""
    import ray

    # A worker inherits the environment of `ray start`, not the driver's: the same decision, from the same spec.
    go_offline_for({modality: spec})
    if spec.module:
        register_module(modality, spec.module)
    write_shard(task, root, out_dir, modality=modality, spec=spec, batch_size=batch_size, shard_size=shard_size)
    return ray.get_runtime_context().get_node_id()


def run_on_ray(tasks: list[ShardTask], root: Path, out_dir: Path, *, address: str, project_dir: Path, modality: str,
               spec: ModalitySpec, batch_size: int, shard_size: int) -> set[str]:
    """Join the cluster at `address` and run every task there; a progress bar over finished tasks. Returns the ids of
    the nodes that wrote shards. A failed task stops the run with its error (the shard and the row it names)."""
    import multimodal

    join_ray(address, project_dir, runtime_env={"py_modules": [multimodal]})
    import ray

    logger.info("preprocess %s on the Ray cluster at %s: %d tasks", modality, address, len(tasks))
    remote = ray.remote(num_cpus=1)(shard_on_worker)
    # Absolute paths: a worker's working directory is not the project's.
    root, out_dir = root.resolve(), out_dir.resolve()
    running = {remote.remote(task, root, out_dir, modality=modality, spec=spec, batch_size=batch_size,
                             shard_size=shard_size): task for task in tasks}
    nodes: set[str] = set()
    with tqdm(total=len(tasks), desc=f"preprocess {modality} on {address}", unit="shard") as bar:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            task = running.pop(done[0])
            try:
                nodes.add(ray.get(done[0]))
            except ray.exceptions.RayError as err:
                for ref in running:  # the stage fails: no task may write into its output folder any more
                    ray.cancel(ref, force=True)
                raise task_error(err, task, modality) from None
            bar.update(1)
    logger.info("preprocess %s: %d shards written by Ray tasks on node(s) %s", modality, len(tasks),
                ", ".join(sorted(nodes)))
    return nodes


def task_error(err: Exception, task: ShardTask, modality: str) -> ShardError:
    """The task's own error as the local path raises it, or one naming the shard (a worker or node that died)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, ShardError):
        return ShardError(str(cause))
    return ShardError(f"preprocess {modality}: shard {task.name} failed on the Ray cluster: {err}")
