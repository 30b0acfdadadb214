"""Example applications. `telemetry` is the pipeline `kubeq demo telemetry` runs."""
