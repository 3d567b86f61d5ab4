"""The one place that decides how arrays are laid out over devices and processes.

Data parallel: a 1-D `Mesh` over every device of every process (axis "data"); token batches are
sharded along it, parameters and optimiser state replicated. Model code never mentions sharding;
XLA inserts the gradient all-reduce.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclass(frozen=True)
class DataParallel:
    """A data-parallel mesh and the two shardings training uses."""

    mesh: Mesh

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def batch(self) -> NamedSharding:
        """Leading (token) axis split over devices."""
        return NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def check_batch_size(self, global_batch: int) -> None:
        """ValueError unless the batch splits evenly over processes and devices."""
        if global_batch % self.n_devices or global_batch % jax.process_count():
            raise ValueError(f"batch size {global_batch} is not divisible by the {self.n_devices} "
                             f"devices of {jax.process_count()} process(es)")

    def local_batch_size(self, global_batch: int) -> int:
        """Tokens this process contributes to each global batch."""
        return global_batch // jax.process_count()

    def put_batch(self, local_BD: np.ndarray) -> jax.Array:
        """Global batch array from this process's slice (its rows, in process order)."""
        return jax.make_array_from_process_local_data(self.batch, local_BD)

    def replicate(self, tree: Any) -> Any:
        """Every leaf replicated on every device (identical host values on every process)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put(leaf):
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

        return jax.tree.map(put, tree)


def make_data_parallel(devices: Sequence[jax.Device] | None = None) -> DataParallel:
    """Mesh over `devices` (default: all devices of all processes)."""
    devs = list(devices) if devices is not None else jax.devices()
    return DataParallel(Mesh(np.array(devs), ("data",)))
