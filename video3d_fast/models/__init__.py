"""video3d_fast.models: the 3D CNNs of Hara et al. (CVPR 2018) with the authors' key layout, on fused ops.

    from video3d_fast.models import generate_model, r3d_50, list_models, fuse, set_backend
    model = generate_model("resnext", model_depth=101, n_classes=400, backend="auto")   # fused ops
    set_backend(model, "torch")                                 # the authors' plain-module computation
    tv = fuse(torchvision.models.video.r3d_18())                # any Conv3d->BN->ReLU(+res) model

See docs/models.md for the table of models, the fixed author bugs and what is fused per architecture.
"""
from .checkpoint import (
    convert_cvpr2018_state_dict,
    detect_checkpoint_format,
    load_checkpoint,
    read_checkpoint,
    state_dict_from_torchvision,
    state_dict_to_torchvision,
    strip_module_prefix,
)
from .densenet import DenseNet
from .factory import MODEL_DEPTHS, MODEL_NAMES, generate_model
from .fusion import BACKEND_NAMES, BackendMixin, conv_bn_act, fuse, get_backend, record_conv_units, set_backend
from .preact_resnet import PreActivationBasicBlock, PreActivationBottleneck
from .registry import (
    densenet3d_121,
    densenet3d_169,
    densenet3d_201,
    densenet3d_264,
    get_model,
    get_model_builder,
    get_model_weights,
    get_weight,
    list_models,
    preact_r3d_10,
    preact_r3d_18,
    preact_r3d_34,
    preact_r3d_50,
    preact_r3d_101,
    preact_r3d_152,
    preact_r3d_200,
    r2plus1d_10,
    r2plus1d_18,
    r2plus1d_34,
    r2plus1d_50,
    r2plus1d_101,
    r2plus1d_152,
    r2plus1d_200,
    r3d_10,
    r3d_18,
    r3d_34,
    r3d_50,
    r3d_101,
    r3d_152,
    r3d_200,
    resnext3d_50,
    resnext3d_101,
    resnext3d_152,
    resnext3d_200,
    torchvision_r3d_18,
    wide_r3d_50,
    wide_r3d_101,
    wide_r3d_152,
    wide_r3d_200,
)
from .resnet import BasicBlock, Bottleneck, ProjectionShortcut, ResNet, ZeroPadShortcut
from .resnet2p1d import BasicBlock2p1d, Bottleneck2p1d, ResNet2p1d
from .resnext import ResNeXt, ResNeXtBottleneck
from .shapes import conv_layer_shapes, fusion_coverage, model_complexity, unique_conv_shapes
from .weights import (
    ClipPreprocess,
    DenseNet3D_121_Weights,
    DenseNet3D_201_Weights,
    PreActR3D_200_Weights,
    R2Plus1D_18_Weights,
    R2Plus1D_34_Weights,
    R2Plus1D_50_Weights,
    R3D_18_Weights,
    R3D_34_Weights,
    R3D_50_Weights,
    R3D_101_Weights,
    R3D_152_Weights,
    R3D_200_Weights,
    ResNeXt3D_101_Weights,
    TorchvisionR3D_18_Weights,
    Weights,
    WeightsEnum,
    WideR3D_50_Weights,
)
from .wide_resnet import WideBottleneck
