"""The operator's decisions as pure functions: no I/O, no kopf, no Kubernetes or Redis client;
time is a parameter. The only file it reads is the packaged CRD (`crd_schema`), as data."""
