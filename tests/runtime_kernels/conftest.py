"""Fixtures shared by the runtime_kernels tests."""

import pytest

from edgepack.runtime_kernels.ort_session import ort_library_path


@pytest.fixture(scope="module")
def ort_library():
    """Skip the module's tests when libedgepack_ort has not been built."""
    try:
        return ort_library_path()
    except FileNotFoundError as exc:  # pragma: no cover - depends on the build
        pytest.skip(str(exc))
