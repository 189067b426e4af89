"""The native scale-out demo: ``python -m scale`` (``make scale-demo``)."""
