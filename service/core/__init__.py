"""The transport-free core of every request: a query in, a model's answer out.

The fronts (the genserve REST routes, the Open Inference Protocol over REST and gRPC)
only turn their wire format into a query (`queries.py`) and a result (`results.py`) back
into theirs; validation against the model, the engine call under its deadline, and the
metrics of the work happen once, here (`operations.py`).
"""

from .calls import Call, guarded
from .operations import Operations
from .queries import ReconstructQuery, SampleQuery, ScoreQuery
from .results import ReconstructResult, SampleResult, ScoreResult

__all__ = [
    "Call",
    "Operations",
    "ReconstructQuery",
    "ReconstructResult",
    "SampleQuery",
    "SampleResult",
    "ScoreQuery",
    "ScoreResult",
    "guarded",
]
