// The one source of traind_torch_pch (CMakeLists.txt): the target exists to
// compile <torch/torch.h> once, as a precompiled header, for every target
// that includes it.
