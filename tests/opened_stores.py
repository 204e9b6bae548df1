"""A sweep's stores opened as a driver opens them: the lease taken, then the stores."""

from __future__ import annotations

from rnnsweep.orchestrator.stores import SweepStores


def opened_stores(spec, state_dir, resume: bool = False) -> SweepStores:
    stores = SweepStores(spec, str(state_dir))
    stores.take_lease(resume)
    stores.open(resume)
    return stores
