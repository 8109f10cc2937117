// The i64 index dtype: creation, host reads, casts (truncation, no derivative), views and copies,
// checkpoints, and the error every computing op gives when handed an index tensor.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "ops/ops.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

using namespace df;
using namespace df::test;

namespace {
std::vector<int64_t> ints(const Tensor& t) {
  Tensor c = t.contiguous();
  REQUIRE(c.dtype() == DType::I64);
  const int64_t* p = c.data_as<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}
}  // namespace

TEST_CASE("i64: creation, host reads and desc") {
  CHECK(dtype_size(DType::I64) == 8);
  CHECK(std::string(dtype_name(DType::I64)) == "i64");
  Tensor a = from_vector({3, -2, 7, 0}, {2, 2}, DType::I64);
  CHECK(a.dtype() == DType::I64);
  CHECK(a.desc() == "i64[2, 2] cpu");
  CHECK(a.to_vector() == std::vector<double>{3, -2, 7, 0});
  CHECK(ints(a) == std::vector<int64_t>{3, -2, 7, 0});
  CHECK(from_vector({-5}, {}, DType::I64).item() == -5);
  // from_vector truncates like a cast; from_indices is exact beyond 2^53.
  CHECK(ints(from_vector({1.9, -1.9}, {2}, DType::I64)) == std::vector<int64_t>{1, -1});
  int64_t big = (int64_t(1) << 53) + 1;
  CHECK(ints(from_indices({big, -big})) == std::vector<int64_t>{big, -big});
  CHECK(from_indices({1, 2, 3, 4, 5, 6}, {2, 3}).shape() == Shape{2, 3});
  CHECK(ints(zeros({3}, DType::I64)) == std::vector<int64_t>{0, 0, 0});
  CHECK(ints(full({2}, 4, DType::I64)) == std::vector<int64_t>{4, 4});
  CHECK(ints(arange(0, 5, 2, DType::I64)) == std::vector<int64_t>{0, 2, 4});
  CHECK(contains(error_of([] { randn({2}, 1, DType::I64); }), "randn: expected a floating dtype"));
  CHECK(contains(error_of([] { rand({2}, 1, DType::I64); }), "rand: expected a floating dtype"));
  CHECK(contains(error_of([] { Tensor t = zeros({2}, DType::I64); t.requires_grad_(); }),
                 "requires_grad_: only floating tensors"));
}

TEST_CASE("i64: casts truncate toward zero and carry no derivative") {
  Tensor x = from_vector({1.7, -1.7, 2.5, -0.5, 3.0, -1e30}, {6}, DType::F64);
  Tensor i = cast(x, DType::I64);
  CHECK(ints(i) == std::vector<int64_t>{1, -1, 2, 0, 3, std::numeric_limits<int64_t>::min()});
  Tensor nan = cast(from_vector({std::nan("")}, {1}, DType::F32), DType::I64);
  CHECK(ints(nan) == std::vector<int64_t>{std::numeric_limits<int64_t>::min()});
  CHECK(ints(cast(from_vector({-2.75, 4.25}, {2}, DType::F32).to(DType::BF16), DType::I64)) ==
        std::vector<int64_t>{-2, 4});
  Tensor back = cast(from_indices({-3, 0, 9}), DType::F32);
  CHECK(back.dtype() == DType::F32);
  CHECK(back.to_vector() == std::vector<double>{-3, 0, 9});
  CHECK(cast(from_indices({-3, 256}), DType::BF16).to_vector() == std::vector<double>{-3, 256});
  CHECK(from_indices({7}).to(DType::F64).item() == 7);

  // Reverse mode: an index made from a parameter is a constant.
  Tensor w = from_vector({1.5, 2.5}, {2}, DType::F64).requires_grad_();
  Tensor wi = cast(w, DType::I64);
  CHECK_FALSE(wi.requires_grad());
  CHECK_FALSE(cast(wi, DType::F64).requires_grad());
  // Forward mode: no tangent crosses an i64 cast.
  {
    DualLevel level;
    Tensor d = make_dual(from_vector({1.5, 2.5}, {2}, DType::F64), ones({2}, DType::F64));
    Tensor r = cast(cast(d, DType::I64), DType::F64);
    CHECK_FALSE(unpack_dual(r).second.defined());
    CHECK(unpack_dual(cast(d, DType::F32)).second.defined());  // float casts still carry one
  }
}

TEST_CASE("i64: views, copies, cat, pad and flip keep the values") {
  Tensor a = from_indices({0, 1, 2, 3, 4, 5}, {2, 3});
  CHECK(ints(reshape(a, {3, 2})) == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(ints(transpose(a, 0, 1)) == std::vector<int64_t>{0, 3, 1, 4, 2, 5});
  CHECK(transpose(a, 0, 1).to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
  CHECK(ints(slice(a, 1, 0, 3, 2)) == std::vector<int64_t>{0, 2, 3, 5});
  CHECK(ints(squeeze(unsqueeze(a, 0), 0)) == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(ints(broadcast_to(from_indices({7, 8}), {2, 2})) == std::vector<int64_t>{7, 8, 7, 8});
  CHECK(ints(cat({a, from_indices({-1, -2, -3}, {1, 3})}, 0)) == std::vector<int64_t>{0, 1, 2, 3, 4, 5, -1, -2, -3});
  CHECK(ints(cat({a, from_indices({9, 9}, {2, 1})}, 1)) == std::vector<int64_t>{0, 1, 2, 9, 3, 4, 5, 9});
  CHECK(ints(stack({from_indices({1, 2}), from_indices({3, 4})}, 1)) == std::vector<int64_t>{1, 3, 2, 4});
  CHECK(ints(flip(a, {1})) == std::vector<int64_t>{2, 1, 0, 5, 4, 3});
  CHECK(ints(pad(from_indices({1, 2}), {1, 1}, 5)) == std::vector<int64_t>{5, 1, 2, 5});
  auto parts = split(a, {1, 2}, 1);
  CHECK(ints(parts[1]) == std::vector<int64_t>{1, 2, 4, 5});
  CHECK(ints(copy(a)) == ints(a));
  CHECK(to_device(a, Device::CPU).dtype() == DType::I64);
  if (have_cuda()) {
    Tensor d = a.to(Device::CUDA);
    CHECK(d.dtype() == DType::I64);
    CHECK(d.to_vector() == a.to_vector());
    CHECK(transpose(d, 0, 1).contiguous().to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
    CHECK(cat({d, d}, 0).to_vector().size() == 12);
    CHECK(cast(d, DType::F32).to_vector() == a.to_vector());
    CHECK(ints(cast(from_vector({1.7, -1.7}, {2}, DType::F32, Device::CUDA), DType::I64).to(Device::CPU)) ==
          std::vector<int64_t>{1, -1});
    CHECK(full({3}, 5, DType::I64, Device::CUDA).to_vector() == std::vector<double>{5, 5, 5});
  }
}

TEST_CASE("i64: computing ops reject index tensors and name the op") {
  Tensor i = from_indices({1, 2, 3});
  Tensor f = from_vector({1, 2, 3}, {3}, DType::F64);
  auto rejects = [](const std::function<void()>& fn, const char* op) {
    std::string e = error_of(fn);
    CAPTURE(e);
    CHECK(contains(e, std::string(op) + ": expected a floating dtype"));
    CHECK(contains(e, "i64"));
  };
  rejects([&] { exp(i); }, "exp");
  rejects([&] { add(i, 1.0); }, "add_scalar");
  rejects([&] { relu(i); }, "relu");
  rejects([&] { add(i, i); }, "add");
  rejects([&] { mul(i, i); }, "mul");
  rejects([&] { where(f, i, i); }, "where");
  rejects([&] { sum(i); }, "sum");
  rejects([&] { max(i); }, "max");
  rejects([&] { matmul(reshape(i, {1, 3}), reshape(i, {3, 1})); }, "matmul");
  rejects([&] { softmax(i); }, "softmax");
  rejects([&] { index_select(i, 0, {0}); }, "index_select");
  rejects([&] { conv2d(reshape(i, {1, 1, 1, 3}), from_indices({1}, {1, 1, 1, 1})); }, "conv2d");
  rejects([&] { attention(reshape(i, {1, 1, 3, 1}), reshape(i, {1, 1, 3, 1}), reshape(i, {1, 1, 3, 1})); },
          "attention");
  if (have_cuda()) rejects([&] { exp(i.to(Device::CUDA)); }, "exp");
}

TEST_CASE("i64: safetensors checkpoints round-trip index tensors") {
  std::string dir = temp_dir("int64");
  int64_t big = (int64_t(1) << 60) + 3;
  save_safetensors(dir + "/c.safetensors", {{"ids", from_indices({big, -1, 0}, {3})},
                                            {"w", from_vector({0.5}, {1}, DType::F32)}});
  Checkpoint ck = load_safetensors(dir + "/c.safetensors");
  CHECK(ck.at("ids").dtype() == DType::I64);
  CHECK(ints(ck.at("ids")) == std::vector<int64_t>{big, -1, 0});
  CHECK(ck.at("w").dtype() == DType::F32);
}
