"""The Open Inference Protocol (KServe v2): a data plane over the core, and its fronts."""
