"""Prebuilt install of the C++/CUDA extension: `pip install --no-build-isolation -e .`

Without it the extension is JIT-built at first use (video3d_fast/_extension.py). Both builds share
the source list and flags of _extension.py. VIDEO3D_FAST_CUDA=0/1 skips/forces the CUDA sources;
TORCH_CUDA_ARCH_LIST picks GPU architectures (default 8.0;9.0 when no GPU is visible).
"""
import importlib.util
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _load_build_helpers():
    # Import _extension.py by path: importing the package would import torch ops we are about to build.
    spec = importlib.util.spec_from_file_location("_v3d_build", ROOT / "video3d_fast" / "_extension.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def extensions():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # torch not installed in the build environment: the JIT path will build later
        print("video3d_fast: torch not importable at build time; the extension will be JIT-built at first use")
        return [], {}
    helpers = _load_build_helpers()
    with_cuda, reason = helpers.cuda_build_decision()
    if reason:
        print(f"video3d_fast: {reason}")
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = helpers.os.environ["CUDA_HOME"]
    sources = [str(Path(s).relative_to(ROOT)) for s in helpers.sources(with_cuda)]
    kind = CUDAExtension if with_cuda else CppExtension
    ext = kind(
        name="video3d_fast._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args=helpers.compile_args(with_cuda),
        extra_link_args=["-fopenmp"],
    )
    print(f"video3d_fast: building {'CPU+CUDA' if with_cuda else 'CPU-only'} extension from {len(sources)} sources")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
