"""PEP 517 build backend of rlkl: setuptools' own backend, with its scratch folders moved out of the source tree.

setuptools writes ``build/`` (and ``rlkl.egg-info/``) next to ``pyproject.toml`` when it builds a wheel; files left
there from an earlier build can end up in a later wheel, and the checkout is left dirty. Here every build hook runs
with an extra distutils configuration (``DIST_EXTRA_CONFIG``, read by setuptools >= 64) that points ``build_base``
and ``egg_base`` into a temporary folder, removed when the hook returns. Everything else is setuptools' backend.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the hooks not wrapped below are setuptools' own)


@contextlib.contextmanager
def _scratch_outside_tree():
    with tempfile.TemporaryDirectory(prefix="rlkl-build-") as tmp:
        cfg = os.path.join(tmp, "scratch.cfg")
        with open(cfg, "w", encoding="utf-8") as fh:
            fh.write(f"[build]\nbuild_base = {os.path.join(tmp, 'build')}\n[egg_info]\negg_base = {tmp}\n")
        saved = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = cfg
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("DIST_EXTRA_CONFIG", None)
            else:
                os.environ["DIST_EXTRA_CONFIG"] = saved


def get_requires_for_build_wheel(config_settings=None):
    with _scratch_outside_tree():
        return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    with _scratch_outside_tree():
        return _setuptools.get_requires_for_build_sdist(config_settings)


def get_requires_for_build_editable(config_settings=None):
    with _scratch_outside_tree():
        return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    with _scratch_outside_tree():
        return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with _scratch_outside_tree():
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    with _scratch_outside_tree():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with _scratch_outside_tree():
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    with _scratch_outside_tree():
        return _setuptools.build_sdist(sdist_directory, config_settings)
