// Schemas of the extension's kernel-level ops (namespace video3d_fast_kernels). They are not autograd
// aware: video3d_fast/ops/library.py wraps them (backend "cpu" / "cuda") in the differentiable custom
// ops of the video3d_fast namespace. Device implementations: conv3d_bn_act.cpp (CPU and CUDA keys).
#include <Python.h>
#include <torch/library.h>

namespace video3d_fast {

void set_poison_outputs(bool enabled);  // conv3d_bn_act.cpp

bool cuda_compiled() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(video3d_fast_kernels, m) {
  m.def("cuda_compiled() -> bool", &cuda_compiled);
  m.def("set_poison_outputs(bool enabled) -> ()", &set_poison_outputs);
  // act(conv3d(input, weight) * scale + shift [+ residual]) -> (out, conv_out or empty)
  m.def(
      "affine_act_forward(Tensor input, Tensor weight, Tensor scale, Tensor shift, Tensor? residual, "
      "int[] stride, int[] padding, int[] dilation, int groups, bool relu, bool save_conv_out) -> (Tensor, Tensor)");
  // grads of (input, weight, scale, shift, residual); undefined (None) where output_mask is 0
  m.def(
      "affine_act_backward(Tensor grad, Tensor out, Tensor? conv_out, Tensor input, Tensor weight, Tensor scale, "
      "int[] stride, int[] padding, int[] dilation, int groups, bool relu, int[] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // act(batchnorm_train(conv3d(input, weight)) [+ residual]) -> (out, conv_out, mean, biased var)
  m.def(
      "batchnorm_act_forward(Tensor input, Tensor weight, Tensor bn_weight, Tensor bn_bias, Tensor? residual, "
      "int[] stride, int[] padding, int[] dilation, int groups, float eps, bool relu) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // grads of (input, weight, bn_weight, bn_bias, residual)
  m.def(
      "batchnorm_act_backward(Tensor grad, Tensor out, Tensor conv_out, Tensor mean, Tensor var, Tensor input, "
      "Tensor weight, Tensor bn_weight, int[] stride, int[] padding, int[] dilation, int groups, float eps, "
      "bool relu, int[] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace video3d_fast

// Lets setup.py's build be imported as the Python module video3d_fast._C (importing it runs the static
// registrations above); the JIT build loads the same library with torch.ops.load_library instead.
static struct PyModuleDef video3d_fast_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&video3d_fast_c_module); }
