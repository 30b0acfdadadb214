"""The web dashboard (`kubeq dashboard`; needs the `dashboard` extra: Starlette, uvicorn)."""
