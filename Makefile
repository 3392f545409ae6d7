# Two entry points; each installs what it needs on first use (see scripts/bootstrap.sh).
VENV ?= .venv
RUNS ?= results

# The numerics tests (fast kernels against their oracles, exact resume), rerun on other CPU code paths
# so an AVX-512 machine cannot hide an AVX2-only failure: ATen's AVX2 kernels, oneDNN and MKL capped
# at AVX2, and the fused head's GEMMs on their MKL fallback (KSSM_FUSED_GEMM, kssm_core/model/fused_ce.py).
# (From test_resume.py its numerics test: losses after a SIGKILL + resume equal the uninterrupted run's.)
NUMERICS = tests/core/test_oscillator_fast.py tests/core/test_fused_ce.py tests/core/test_model.py \
	tests/core/test_resume.py::test_resume_after_sigkill_logs_identical_losses
SKIP_SMOKE = --deselect tests/core/test_oscillator_fast.py::test_benchmark_script_smoke
AVX2_ENV = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 KSSM_FUSED_GEMM=mkl

.PHONY: run test test-numerics-avx2 test-numerics-nosimd bench setup

setup:
	@./scripts/bootstrap.sh

run: setup  ## open the cockpit; press n to train Stage 1 on the embedded corpus
	@$(VENV)/bin/kssm-tui $(RUNS)

test: setup  ## the whole test suite (CPU, about 5 minutes on 2 cores with AVX-512, 7 on an AVX2-only one)
	@$(VENV)/bin/python -m pytest -q

test-numerics-avx2: setup  ## the numerics tests on the AVX2 code paths and the MKL fallback GEMMs
	@$(AVX2_ENV) $(VENV)/bin/python -m pytest -q $(SKIP_SMOKE) $(NUMERICS)

test-numerics-nosimd: setup  ## the same on ATen's portable (non-SIMD) kernels
	@ATEN_CPU_CAPABILITY=default $(VENV)/bin/python -m pytest -q $(SKIP_SMOKE) $(NUMERICS)

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(VENV)/bin/python $$f --quick || exit 1; done
