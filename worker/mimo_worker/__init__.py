"""The data plane of mimo-operator: runs inside every engine pod (head or member of a gang)."""

__version__ = "0.1.0"
