"""KServe's own Python client against a running server (run in a subprocess by
test_clients.py: its generated `inference` messages and tritonclient's cannot share one
process). Prints one JSON object of what it got.

    python tests/service/oip/kserve_client.py HTTP_PORT GRPC_PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

MODEL = "flow-digits.log_likelihood"


async def main(port: int, grpc_port: int) -> None:
    x = np.random.default_rng(1).integers(0, 17, (4, 1, 8, 8)).astype(np.int64)
    out: dict[str, object] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    base = f"http://127.0.0.1:{port}"
    out["rest_ready"] = await rest.is_server_ready(base)
    out["rest_live"] = await rest.is_server_live(base)
    out["rest_model_ready"] = await rest.is_model_ready(base, MODEL)
    t = InferInput("inputs", list(x.shape), "INT64")
    t.set_data_from_numpy(x, binary_data=False)
    r = await rest.infer(
        base, InferRequest(model_name=MODEL, infer_inputs=[t], parameters={"seed": 4}), model_name=MODEL
    )
    out["rest"] = {o.name: o.as_numpy().tolist() for o in r.outputs}
    await rest.close()
    grpc = InferenceGRPCClient(url=f"127.0.0.1:{grpc_port}")
    out["grpc_ready"] = await grpc.is_server_ready()
    out["grpc_model_ready"] = await grpc.is_model_ready(MODEL)
    raw = InferInput("inputs", list(x.shape), "INT64")
    raw.set_data_from_numpy(x)
    r = await grpc.infer(InferRequest(model_name=MODEL, infer_inputs=[raw], parameters={"seed": 4}))
    out["grpc_raw"] = {o.name: o.as_numpy().tolist() for o in r.outputs}
    typed = InferInput("inputs", list(x.shape), "INT64", data=x.reshape(-1).tolist())
    r = await grpc.infer(InferRequest(model_name=MODEL, infer_inputs=[typed], parameters={"seed": 4}))
    out["grpc_typed"] = {o.name: o.as_numpy().tolist() for o in r.outputs}
    await grpc.close()
    print(json.dumps({"inputs": x.tolist(), **out}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
