"""genserve's offline half: trains, evaluates and exports generative models."""
