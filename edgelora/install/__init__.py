"""Installing a verified bundle on the target host: into Ollama's model store or through
``ollama create`` (see ``installer.py``)."""

from .commands import install_bundle, list_installed, uninstall

__all__ = ["install_bundle", "list_installed", "uninstall"]
