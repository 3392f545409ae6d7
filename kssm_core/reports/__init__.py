"""What leaves a run folder: exports (CSV, JSON lines, TensorBoard), the report with figures, and the pure data
pieces of comparing runs (reference curves, smoothing, an active-time axis). Never writes inside a run folder."""
