"""The device mesh and the shardings of state and batches.

Parameters carry logical axis names (``nn.with_logical_partitioning``);
``config.mesh.logical_axis_rules`` maps them to the mesh axes
(``data``, ``fsdp``, ``tensor``, ``seq``). The batch axis is the logical axis
``batch`` (by default split over ``data`` and ``fsdp``).
"""
import contextlib
import logging
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs.validate import MESH_AXES, mesh_shape


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh ``config.mesh`` describes, over ``devices`` (default: all)."""
  if devices is None:
    devices = jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  size = int(np.prod(list(shape.values())))
  return jax.make_mesh(
      tuple(shape[a] for a in MESH_AXES), MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
      devices=list(devices)[:size])


def axis_rules(mesh_config: ml_collections.ConfigDict) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in mesh_config.logical_axis_rules)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """Activates the mesh and the logical axis rules (for constraints in models)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of a batch array: its leading axis split like logical ``batch``."""
  return nn.logical_to_mesh_sharding(PartitionSpec("batch"), mesh, rules)


def data_parallel_size(mesh: Mesh, rules) -> int:
  spec = batch_sharding(mesh, rules).spec
  axes = spec[0] if spec else None
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def _divisible_spec(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
  """``spec`` without the mesh axes that do not divide their dimension."""
  entries = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      entries.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    if dim % int(np.prod([mesh.shape[a] for a in names])):
      logging.info("replicating a dimension of size %d instead of splitting "
                   "it over mesh axes %s", dim, names)
      entries.append(None)
    else:
      entries.append(axes)
  return PartitionSpec(*entries)


def variables_sharding(boxed_abstract_variables: Any, mesh: Mesh, rules) -> Any:
  """Mesh shardings of (unboxed) variables, from their logical axis names.

  A dimension that the mesh axes of its logical name do not divide (e.g. a
  vocabulary of 3 over 2 devices) is replicated instead.
  """
  logical = nn.get_partition_spec(boxed_abstract_variables)
  shardings = nn.logical_to_mesh_sharding(logical, mesh, rules)
  is_box = lambda x: isinstance(x, flax.core.meta.AxisMetadata)
  shapes = jax.tree.map(
      lambda x: (x.unbox(apply_constraint=False) if is_box(x) else x).shape,
      boxed_abstract_variables, is_leaf=is_box)
  return jax.tree.map(
      lambda s, shape: NamedSharding(mesh, _divisible_spec(s.spec, shape, mesh)),
      shardings, shapes, is_leaf=lambda x: isinstance(x, NamedSharding))


def like_params_sharding(tree: Any, params: Any, params_sharding: Any,
                         default: NamedSharding) -> Any:
  """Shardings for a tree holding parameter-shaped leaves (optimizer state).

  A leaf whose key path ends with a parameter's key path and that has the
  parameter's shape gets the parameter's sharding (Adam moments); other
  leaves (step counts, ...) get ``default``.
  """
  table = {}
  for (path, p), s in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree_util.tree_leaves(params_sharding)):
    table[tuple(path)] = (p.shape, s)

  def pick(path, leaf):
    for start in range(len(path)):
      hit = table.get(tuple(path[start:]))
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(pick, tree)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's rows -> global jax arrays split over the batch axis."""

  def put(x):
    x = np.asarray(x)
    spec = PartitionSpec(*(sharding.spec[:1] + (None,) * (x.ndim - 1)))
    return jax.make_array_from_process_local_data(
        NamedSharding(sharding.mesh, spec), x)

  return {k: put(v) for k, v in local_batch.items()}
