"""Build hook: ship the top-level templates/ and Modelfile.j2 inside the package.

They stay at the top of the repository (where a project author reads and edits them); a
wheel has no "top of the repository", so the built package carries copies under
``edgelora/_shipped/``, where :mod:`edgelora.util.resources` looks when the source tree is absent.
Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_templates(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the source tree
        dest = Path(self.build_lib) / "edgelora" / "_shipped"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ROOT / "templates", dest / "templates",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(ROOT / "Modelfile.j2", dest / "Modelfile.j2")


setup(cmdclass={"build_py": build_py_with_templates})
