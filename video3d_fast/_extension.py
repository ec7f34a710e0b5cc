"""Finding, building and loading the C++/CUDA extension (``csrc/``).

Order of attempts, first success wins:
1. the prebuilt module ``video3d_fast._C`` (``pip install --no-build-isolation -e .`` / ``setup.py``);
2. a JIT build at first use with ``torch.utils.cpp_extension.load`` + ninja, cached under
   ``$VIDEO3D_FAST_BUILD_DIR`` (default ``~/.cache/video3d_fast/<torch version>``).

Environment:
* ``VIDEO3D_FAST_CUDA``: ``auto`` (default: CUDA sources when torch is a CUDA build and nvcc is found),
  ``1`` (require them), ``0`` (skip them).
* ``VIDEO3D_FAST_NO_JIT=1``: never build at import/first use (only the prebuilt module).
* ``VIDEO3D_FAST_VERBOSE_BUILD=1``: show compiler output.

The status, with a reason when the extension is missing, is reported by
``video3d_fast.ops.available_backends()``.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC_DIR = PACKAGE_DIR.parent / "csrc"
EXT_NAME = "video3d_fast_C"
KERNEL_NAMESPACE = "video3d_fast_kernels"
DEFAULT_CUDA_ARCHS = "8.0;9.0"


@dataclass
class ExtensionStatus:
    loaded: bool
    cuda_compiled: bool
    how: str  # "prebuilt", "jit", or "" when not loaded
    reason: str  # why it is not loaded / why CUDA is missing; "" when everything is there


_status: Optional[ExtensionStatus] = None
_lock = threading.Lock()


# ------------------------------------------------------------------------------------------------
# toolchain discovery (shared with setup.py, which imports this module by path)
# ------------------------------------------------------------------------------------------------
def _is_toolkit_root(path: Path) -> bool:
    return (path / "bin" / "nvcc").exists() and (path / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit root (bin/nvcc, include/, lib64/).

    Honours CUDA_HOME/CUDA_PATH; else asks nvcc itself (``--dryrun`` prints its real TOP, which also
    sees through wrapper scripts on PATH); else looks in the standard install folders.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and _is_toolkit_root(Path(value)):
            return str(Path(value).resolve())
    nvcc = shutil.which("nvcc")
    if nvcc:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.cu"
            src.write_text("")
            try:
                out = subprocess.run(
                    [nvcc, "--dryrun", "-c", str(src), "-o", str(Path(tmp) / "probe.o")],
                    capture_output=True, text=True, timeout=60,
                )
                match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
                if match and _is_toolkit_root(Path(match.group(1).strip())):
                    return str(Path(match.group(1).strip()).resolve())
            except (OSError, subprocess.SubprocessError):
                pass
    for candidate in ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True), "/opt/cuda"]:
        if _is_toolkit_root(Path(candidate)):
            return str(Path(candidate).resolve())
    return None


def cuda_build_decision() -> tuple:
    """(build_cuda: bool, reason: str). Raises if VIDEO3D_FAST_CUDA=1 but CUDA cannot be built."""
    mode = os.environ.get("VIDEO3D_FAST_CUDA", "auto").strip().lower()
    if mode in ("0", "false", "off", "no"):
        return False, "CUDA sources skipped (VIDEO3D_FAST_CUDA=0)"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        problems.append("no CUDA toolkit (nvcc) found; set CUDA_HOME to the toolkit root")
    if problems:
        reason = "CUDA sources not built: " + "; ".join(problems)
        if mode in ("1", "true", "on", "yes"):
            raise RuntimeError(f"VIDEO3D_FAST_CUDA=1 but {reason}")
        return False, reason
    os.environ["CUDA_HOME"] = cuda_home  # torch's builder reads it
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to ask: build for the architectures we target (A100 and H100 class).
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return True, ""


def cpu_flags() -> List[str]:
    """Vector ISA flags for ATen's Vectorized<> on the building machine (AVX-512 > AVX2 > scalar)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    have = set(flags.split())
    if os.environ.get("VIDEO3D_FAST_CPU_ISA", "").lower() == "default":
        return ["-DCPU_CAPABILITY=DEFAULT"]
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= have:
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma", "f16c"} <= have:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def sources(with_cuda: bool, root: Path = CSRC_DIR) -> List[str]:
    """C++ sources always; .cu (and the CUDA host glue, *_cuda.cpp) only when building CUDA."""
    cpp = sorted(glob.glob(str(root / "**" / "*.cpp"), recursive=True))
    if not with_cuda:
        cpp = [s for s in cpp if not s.endswith("_cuda.cpp")]
        return cpp
    return cpp + sorted(glob.glob(str(root / "**" / "*.cu"), recursive=True))


def compile_args(with_cuda: bool) -> dict:
    cxx = ["-O3", "-fopenmp", *cpu_flags()]
    args = {"cxx": cxx + (["-DWITH_CUDA"] if with_cuda else [])}
    if with_cuda:
        args["nvcc"] = ["-O3", "-lineinfo", "-DWITH_CUDA"]
    return args


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _cuda_compiled() -> bool:
    return bool(getattr(torch.ops, KERNEL_NAMESPACE).cuda_compiled())


def _try_prebuilt() -> Optional[str]:
    built = sorted(PACKAGE_DIR.glob("_C*.so"))
    if built and CSRC_DIR.is_dir():
        newest_source = max((p.stat().st_mtime for p in CSRC_DIR.rglob("*") if p.is_file()), default=0.0)
        if newest_source > built[0].stat().st_mtime:
            # An edited csrc/ must not run old kernels: fall through to the JIT build of the sources.
            return f"prebuilt {built[0].name} is older than csrc/ (rebuild with `make setup`)"
    try:
        from . import _C  # noqa: F401  (importing registers the ops)
    except ImportError as exc:
        return f"no prebuilt video3d_fast._C ({exc})"
    return None


def _default_build_dir() -> Path:
    base = os.environ.get("VIDEO3D_FAST_BUILD_DIR")
    if base:
        return Path(base)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info.major}{sys.version_info.minor}"
    return cache / "video3d_fast" / tag


def _try_jit() -> Optional[str]:
    if os.environ.get("VIDEO3D_FAST_NO_JIT", "0") == "1":
        return "JIT build disabled (VIDEO3D_FAST_NO_JIT=1)"
    if not CSRC_DIR.is_dir():
        return f"C++ sources not found at {CSRC_DIR} (installed without csrc/)"
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401
        except ImportError:
            return "JIT build needs ninja (pip install ninja)"
        ninja_bin = Path(sys.executable).parent
        os.environ["PATH"] = f"{ninja_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    with_cuda, _ = cuda_build_decision()
    from torch.utils import cpp_extension

    if with_cuda:  # cpp_extension reads CUDA_HOME once at import; it may have been imported before us
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    build_dir = _default_build_dir() / ("cuda" if with_cuda else "cpu")
    build_dir.mkdir(parents=True, exist_ok=True)
    args = compile_args(with_cuda)
    try:
        cpp_extension.load(
            name=EXT_NAME,
            sources=sources(with_cuda),
            extra_cflags=args["cxx"],
            extra_cuda_cflags=args.get("nvcc"),
            extra_include_paths=[str(CSRC_DIR)],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=os.environ.get("VIDEO3D_FAST_VERBOSE_BUILD", "0") == "1",
        )
    except Exception as exc:  # compiler missing, compile error, ...
        lines = str(exc).strip().splitlines()
        return f"JIT build failed ({type(exc).__name__}: {lines[-1] if lines else ''}); " \
               "rerun with VIDEO3D_FAST_VERBOSE_BUILD=1 to see the compiler output"
    return None


def load_extension() -> ExtensionStatus:
    """Load (building if needed) the extension once; never raises, returns the status."""
    global _status
    if _status is not None:
        return _status
    with _lock:
        if _status is not None:
            return _status
        how, reasons = "", []
        why = _try_prebuilt()
        if why is None:
            how = "prebuilt"
        else:
            reasons.append(why)
            why = _try_jit()
            if why is None:
                how = "jit"
            else:
                reasons.append(why)
        if not how:
            _status = ExtensionStatus(False, False, "", "; ".join(reasons))
        else:
            has_cuda = _cuda_compiled()
            reason = "" if has_cuda else "extension built without CUDA sources"
            _status = ExtensionStatus(True, has_cuda, how, reason)
        return _status
