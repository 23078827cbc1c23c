"""gpt2kit on CPUs: what the CPU has (features), the C kernels built for it (kernels), the weight
formats they read (weights), the decision of which path `--dtype auto` takes (policy, tuning), and
the one entry point that prepares a loaded model for this CPU (prepare)."""
