"""Fixtures shared across test folders. Keep each one small and named for what it gives."""

import pytest

from trilora.base.tiny import save_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny random-weight SD-shaped model (seed 0) as a diffusers folder, saved once per session.

    Shared by every test: treat it as read-only, copy it before changing anything in it.
    """
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_model") / "tiny", seed=0)
