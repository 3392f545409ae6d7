"""kssm_core: the K-SSM v3 model, data pipeline, trainer and runbook engine. Never imports textual."""

__version__ = "0.1.0"
