// Forwarding header (TRANSITIONAL): moved to lowmem/nn/curvature_tap.h
// (namespace lowmem::nn) when the nn layer was split out of adapters. Include
// that header and use nn:: names; this one is removed once no caller is left.
#pragma once

#include "lowmem/nn/curvature_tap.h"

namespace lowmem::adapters {
using nn::Conv2dGeometry;
using nn::CurvatureLayer;
using nn::CurvatureParamSplit;
using nn::find_curvature_layers;
using nn::kfac_grad_output_matrix;
using nn::kfac_input_matrix;
using nn::KfacApprox;
using nn::KroneckerTap;
using nn::KroneckerTapOptions;
using nn::LossAverage;
using nn::parse_kfac_approx;
using nn::parse_loss_average;
using nn::split_curvature_parameters;
}  // namespace lowmem::adapters
