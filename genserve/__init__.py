"""genserve's Python client (`genserve.client`); the server is `service`, training `training`."""
