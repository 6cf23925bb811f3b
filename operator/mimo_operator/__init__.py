"""mimo-operator: serves Xiaomi's MiMo-V2.5 models with SGLang on multi-node GPU gangs (the control plane)."""

__version__ = "0.1.0"
