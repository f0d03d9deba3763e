#include "common/tensor_diff.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

#include "common/tensor_stats.h"

namespace ckpt {
namespace {

DType ComponentType(DType dtype) {
  if (dtype == DType::kComplex64) return DType::kFloat32;
  if (dtype == DType::kComplex128) return DType::kFloat64;
  return dtype;
}

}  // namespace

const char* TensorChangeName(TensorChange change) {
  switch (change) {
    case TensorChange::kChanged:
      return "changed";
    case TensorChange::kOnlyInA:
      return "only in a";
    case TensorChange::kOnlyInB:
      return "only in b";
    case TensorChange::kMetaChanged:
      return "dtype/shape";
  }
  return "?";
}

DiffAccumulator::DiffAccumulator(DType dtype)
    : dtype_(ComponentType(dtype)),
      element_bytes_(std::max<size_t>(1, DTypeSize(dtype_))),
      carry_(element_bytes_) {}

void DiffAccumulator::Add(absl::string_view a, absl::string_view b) {
  if (a != b) identical_ = false;
  carry_.Feed(
      {reinterpret_cast<const uint8_t*>(a.data()), reinterpret_cast<const uint8_t*>(b.data())},
      std::min(a.size(), b.size()),
      [this](const ElementCarry<2>::Starts& p, size_t n) { AddElements(p[0], p[1], n); });
}

void DiffAccumulator::AddElements(const uint8_t* a, const uint8_t* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double x = ElementValue(dtype_, a + i * element_bytes_);
    const double y = ElementValue(dtype_, b + i * element_bytes_);
    if (!std::isfinite(x) || !std::isfinite(y)) {
      ++nonfinite_;
      continue;
    }
    const double d = y - x;
    sum_sq_a_ += x * x;
    sum_sq_diff_ += d * d;
    max_abs_ = std::max(max_abs_, std::fabs(d));
  }
}

void DiffAccumulator::Finish(TensorDiff* out) const {
  out->nonfinite_pairs = nonfinite_;
  out->max_abs_diff = max_abs_;
  if (sum_sq_diff_ == 0) {
    out->rel_l2 = 0;
  } else if (sum_sq_a_ == 0) {
    out->rel_l2 = std::numeric_limits<double>::infinity();
  } else {
    out->rel_l2 = std::sqrt(sum_sq_diff_) / std::sqrt(sum_sq_a_);
  }
}

void SortTensorDiffs(std::vector<TensorDiff>* tensors) {
  std::sort(tensors->begin(), tensors->end(), [](const TensorDiff& x, const TensorDiff& y) {
    const double rx = x.change == TensorChange::kChanged ? -x.rel_l2 : 0;
    const double ry = y.change == TensorChange::kChanged ? -y.rel_l2 : 0;
    auto order = [](TensorChange c) {
      return c == TensorChange::kChanged       ? 0
             : c == TensorChange::kMetaChanged ? 1
             : c == TensorChange::kOnlyInA     ? 2
                                               : 3;
    };
    return std::forward_as_tuple(order(x.change), rx, x.key) <
           std::forward_as_tuple(order(y.change), ry, y.key);
  });
}

}  // namespace ckpt
