"""kubeq against its peers (Celery, RQ, Dramatiq, taskiq, arq, BullMQ), interleaved in one run."""
