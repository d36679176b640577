"""genserve's online half: loads the model store and serves it over HTTP."""

__version__ = "0.1.0"
