"""Dask execution: a local cluster of worker processes started on first use, or an existing scheduler."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from distributed import Client, LocalCluster


@dataclass
class Cluster:
    """Lazily started Dask client. ``workers=0`` (and no scheduler) runs shards in the driver process.

    Use as a context manager; the cluster starts only when a stage actually has shards to run.
    """

    workers: int = 2
    scheduler: str | None = None
    _client: Client | None = field(default=None, init=False, repr=False)
    _cluster: LocalCluster | None = field(default=None, init=False, repr=False)

    @property
    def inline(self) -> bool:
        return self.scheduler is None and self.workers <= 0

    @property
    def client(self) -> Client:
        if self._client is None:
            if self.scheduler:
                self._client = Client(self.scheduler)
            else:
                self._cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,  # a failed shard is reported once, by the runner
                )
                self._client = Client(self._cluster)
        return self._client

    @property
    def threads(self) -> int:
        """Threads each worker process may use so that together they fill this machine's cores."""
        return max(1, default_workers() // max(1, self.workers))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the client (and a local cluster); the next use of ``client`` starts them again."""
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
