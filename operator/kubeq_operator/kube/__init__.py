"""The Kubernetes shell: kopf handlers, the API client and backend, Redis access through
Secrets, the operator's settings and `kubeq operator`."""
