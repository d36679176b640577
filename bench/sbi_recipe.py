"""An SBI training recipe tried on one task: train NPE at 10,000 simulations, then C2ST.

    python -m bench.sbi_recipe TASK TRAIN_JSON CONFIG_JSON OBSERVATIONS
    python -m bench.sbi_recipe two_moons '{}' '{}' 3     # the kept recipe (pipeline defaults)

TRAIN_JSON and CONFIG_JSON override the recipe's optimiser and flow settings (e.g. sbi's own
defaults: '{"batch_size": 50, "lr": 5e-4, "schedule": "exponential", "max_epochs": 2000,
"patience": 20, "ema": 0}' '{"hidden": 50, "transforms": 5}'). Draws come from the eager
model (not the served graphs; `genserve sbi-eval` measures those). docs/results.md lists
the runs that chose the SBI recipe.
"""

import json
import sys
import time

import numpy as np
import torch

from service.vector_transform import FeatureMap
from training.vectors.c2st import c2st
from training.vectors.pipeline import VectorRecipe, train_vectors
from training.vectors.sbi_tasks import get_task


def main() -> None:
    task_name = sys.argv[1]
    train = json.loads(sys.argv[2])
    config = json.loads(sys.argv[3])
    nobs = int(sys.argv[4])
    t = time.time()
    r = train_vectors(VectorRecipe(f"sbi:{task_name}", train=train, config=config), progress=False, say=print)
    print("trained", r.record["epochs"], r.record["stopped"], f"{time.time() - t:.0f}s", flush=True)
    task = get_task(task_name)
    fm = FeatureMap.of(r.spec.support, r.spec.scaling)
    cm = FeatureMap.of(None, r.spec.context_scaling)
    scores = []
    for i in range(1, nobs + 1):
        o = task.observation(i)
        ref = task.reference_posterior(o.x, 10000, seed=i)
        c, _ = cm.to_standard(np.repeat(o.x[None], 10000, 0))
        with torch.no_grad():
            torch.manual_seed(i)
            z = torch.randn(10000, len(task.parameters))
            s = r.model.inverse(z, None, torch.as_tensor(c, dtype=torch.float32)).double().numpy()
        post = fm.from_standard(s)
        t1 = time.time()
        acc = c2st(ref, post)
        scores.append(acc)
        print(f"obs {i}: c2st {acc:.3f} ({time.time() - t1:.0f}s)", flush=True)
    print(
        task_name,
        json.dumps(train),
        json.dumps(config),
        "mean c2st",
        round(float(np.mean(scores)), 3),
        f"total {time.time() - t:.0f}s",
    )


if __name__ == "__main__":
    main()
