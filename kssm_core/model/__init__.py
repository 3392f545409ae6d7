"""The K-SSM v3 network: the module, the fast oscillator readout, the fused head + cross-entropy, the spec's oracle, interventions. Imports torch."""
