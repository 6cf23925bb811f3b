"""The local cluster: a real Kubernetes control plane on loopback with kwok's fake 8-GPU nodes, and
local processes behind labelled pods. Used by the tests, the demo and ``mimoctl cluster``."""
