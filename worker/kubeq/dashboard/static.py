"""The dashboard's one stylesheet and one small script (assets/), served from /static/.

No inline script anywhere: the Content-Security-Policy allows scripts from the
dashboard itself only, so even a value that escaped escaping could not run.
"""

from importlib import resources

_ASSETS = resources.files("kubeq.dashboard").joinpath("assets")
CSS = _ASSETS.joinpath("dashboard.css").read_text(encoding="utf-8")
JS = _ASSETS.joinpath("dashboard.js").read_text(encoding="utf-8")
