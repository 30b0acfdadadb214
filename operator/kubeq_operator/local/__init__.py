"""The local shell: `kubeq up` and `kubeq demo` run the same engine with worker processes and
a private redis-server instead of a cluster."""
