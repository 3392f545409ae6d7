"""The final validation suite (`kssm eval`): one module per suite, a runner, and the shared loader,
held-out data, metrics, progress and result files. See docs/eval.md.

Names are imported lazily (PEP 562) so that `kssm --help` does not pay for importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "DEFAULT_PROMPTS": "options", "EvalOptions": "options", "EvalContext": "context",
    "EvalError": "loader", "LoadedModel": "loader", "infer_model_config": "loader", "load_model": "loader",
    "Criterion": "result", "SuiteResult": "result", "SUITES": "runner", "run_all": "runner", "run_suite": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
