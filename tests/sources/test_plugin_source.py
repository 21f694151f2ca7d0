"""A base-model source registered by a third-party distribution (entry-point group ``edgelora``)
plans and builds end to end: nothing in config validation, plan or fetch names the built-in sources."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from edgelora import api
from edgelora.errors import PlanError
from edgelora.testing.tiny import project_config, write_project

PLUGIN = textwrap.dedent('''
    """A source that serves a model folder from a "model shelf" (here: a folder named in [base] path)."""
    from pathlib import Path

    from edgelora.hookspecs import hookimpl
    from edgelora.registry import Source

    FETCHED = []


    def _shelf(cfg, project_dir):
        return Path(project_dir) / cfg.path


    def _check(cfg, project_dir):
        return [] if cfg.path else ["edgelora.toml: [base] path names the shelf folder for source='shelf'"]


    def _fetch(cfg, project_dir, dest_dir, download=False):
        from edgelora.sources.fetch import fetch_local

        FETCHED.append(str(dest_dir))
        result = fetch_local(_shelf(cfg, project_dir), dest_dir)
        return {**result, "source": "shelf", "revision": "shelf-1"}


    @hookimpl
    def edgelora_register_sources(register):
        register(Source("shelf", _fetch, "a test shelf of model folders", check=_check, locate=_shelf))
''')


@pytest.fixture
def shelf_plugin(tmp_path, monkeypatch):
    """Installs a real distribution (dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    dist = site / "edgelora_shelf-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "edgelora_shelf.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgelora-shelf\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[edgelora]\nshelf = edgelora_shelf\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("EDGELORA_PLUGINS", raising=False)
    yield "shelf"


def test_plan_and_build_with_a_plugin_source(shelf_plugin, tiny_llama_dir, tmp_path):
    config = project_config({"base": {"source": "shelf", "path": "base"}})
    proj = write_project(tmp_path / "proj", tiny_llama_dir, config)

    listing = {(r["kind"], r["name"]): r["plugin"] for r in api.list_plugins()["registered"]}
    assert listing[("source", "shelf")] == "shelf"

    summary = api.plan(proj, log=lambda *_: None)
    assert summary["base"] == str(proj / "base")  # located in place, checked without fetching

    result = api.build(proj, log=lambda *_: None)
    import edgelora_shelf

    assert edgelora_shelf.FETCHED, "the plugin's fetch ran"
    manifest = json.loads((Path(result["bundle"]["dir"]) / "manifest.json").read_text())
    base = manifest["provenance"]["base"]
    assert base["source"] == "shelf" and base["revision"] == "shelf-1"
    assert result["verify_ok"]


def test_plugin_source_field_problems_come_from_the_plugin(shelf_plugin, tiny_llama_dir, tmp_path):
    config = project_config({"base": {"source": "shelf", "path": ""}})
    proj = write_project(tmp_path / "proj", tiny_llama_dir, config)
    with pytest.raises(PlanError) as e:
        api.plan(proj, log=lambda *_: None)
    assert any("path names the shelf folder" in p for p in e.value.problems)


def test_unknown_source_lists_the_registered_ones(tiny_llama_dir, tmp_path):
    config = project_config({"base": {"source": "nowhere", "path": "base"}})
    proj = write_project(tmp_path / "proj", tiny_llama_dir, config)
    with pytest.raises(PlanError) as e:
        api.plan(proj, log=lambda *_: None)
    assert any("source 'nowhere' is not registered" in p and "embedded" in p for p in e.value.problems)
