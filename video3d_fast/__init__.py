"""video3d_fast: fast 3D-CNN video networks (Hara et al., CVPR 2018) on fused Triton and C++/CUDA kernels."""
__version__ = "0.1.0"

from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401
from .models import fuse  # noqa: E402,F401
