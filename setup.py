"""Build edgepack: one import package ``edgepack`` from ``src/`` plus the host C kernels.

``src/edgepack`` links to ``edgepack/``, whose sub-package links point at the top-level folders
(ExecuTorch's ``src/executorch`` technique): the editable install is a plain path entry that
IDEs, pyright and a bare ``sys.path`` resolve, and nothing generic such as ``devices`` lands in
site-packages on its own.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def build_kernels(lib_dir: Path) -> None:
    """Configure and build the host C libraries with CMake, placing them in ``lib_dir``."""
    source = ROOT / "runtime_kernels"
    if not (source / "CMakeLists.txt").exists():
        return
    build_dir = ROOT / "build" / "host"
    subprocess.check_call([
        "cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
        f"-DEDGEPACK_PYTHON_LIB_DIR={lib_dir}",
    ])
    jobs = str(os.cpu_count() or 1)
    subprocess.check_call(["cmake", "--build", str(build_dir), "-j", jobs])


class BuildPyWithKernels(build_py):
    """build_py that also builds the C kernels and ships them inside the package."""

    def run(self):
        source_lib = ROOT / "runtime_kernels" / "lib"
        build_kernels(source_lib)
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "edgepack" / "runtime_kernels" / "lib"
        target.mkdir(parents=True, exist_ok=True)
        for library in source_lib.glob("lib*.so"):
            shutil.copy2(library, target / library.name)


setup(
    name="edgepack",
    version="0.1.0",
    description="Compress PyTorch models and run them fast on phones, ARM boards and MCUs.",
    python_requires=">=3.10",
    packages=find_packages("src"),
    package_dir={"": "src"},
    install_requires=[
        "torch>=2.2",
        "numpy>=1.24",
        "xxhash>=3.0",
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "rich>=13.0",
        "scikit-learn>=1.3",
        "onnx>=1.17",
        "onnxruntime>=1.20",
        "onnxscript>=0.5",
        "matplotlib>=3.10",
        "scipy>=1.11",
        "tflite>=2.18",
        "flatbuffers>=24.3",
    ],
    extras_require={"litert": ["ai-edge-litert>=1.2"], "order": ["ray>=2.60"]},
    entry_points={"console_scripts": ["edgepack=edgepack.cli:main"]},
    cmdclass={"build_py": BuildPyWithKernels},
    zip_safe=False,
)
