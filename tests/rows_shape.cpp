// Op-table rows for reductions, views and slicing/indexing ops (each with an index-arithmetic
// reference over the f64 inputs), plus focused tests: views share storage, errors name the op.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "tests/checker.h"

using namespace df;
using namespace df::test;

namespace {

using Vals = std::vector<double>;
using Idx = std::vector<int64_t>;
using In = std::vector<Vals>;
using Shapes = std::vector<Shape>;

Idx unravel(int64_t k, const Shape& s) {
  Idx idx(s.size());
  for (int64_t d = (int64_t)s.size() - 1; d >= 0; --d) {
    idx[d] = k % s[d];
    k /= s[d];
  }
  return idx;
}

int64_t ravel(const Idx& idx, const Shape& s) {
  int64_t k = 0;
  for (size_t d = 0; d < s.size(); ++d) k = k * s[d] + idx[d];
  return k;
}

// Every output element from its multi-index.
Vals ref_map(const Shape& out, const std::function<double(const Idx&)>& f) {
  Vals r(shape_numel(out));
  for (int64_t k = 0; k < (int64_t)r.size(); ++k) r[k] = f(unravel(k, out));
  return r;
}

// Group the input values by their index on the kept axes (axes: non-negative; empty = all), then
// reduce each group with f. keepdim does not change the flat order.
Vals ref_reduce(const Vals& v, const Shape& s, Shape axes, const std::function<double(const Vals&)>& f) {
  if (axes.empty())
    for (int64_t d = 0; d < (int64_t)s.size(); ++d) axes.push_back(d);
  Shape kept;
  for (int64_t d = 0; d < (int64_t)s.size(); ++d)
    if (std::find(axes.begin(), axes.end(), d) == axes.end()) kept.push_back(d);
  Shape ks;
  for (auto d : kept) ks.push_back(s[d]);
  std::vector<Vals> groups(shape_numel(ks));
  for (int64_t k = 0; k < (int64_t)v.size(); ++k) {
    Idx idx = unravel(k, s), ki;
    for (auto d : kept) ki.push_back(idx[d]);
    groups[ravel(ki, ks)].push_back(v[k]);
  }
  Vals r;
  for (auto& g : groups) r.push_back(f(g));
  return r;
}

double g_sum(const Vals& g) {
  double s = 0;
  for (double x : g) s += x;
  return s;
}
double g_mean(const Vals& g) { return g_sum(g) / g.size(); }
double g_max(const Vals& g) { return *std::max_element(g.begin(), g.end()); }
double g_min(const Vals& g) { return *std::min_element(g.begin(), g.end()); }
std::function<double(const Vals&)> g_norm(double p) {
  return [p](const Vals& g) {
    double s = 0, m = 0;
    for (double x : g) {
      s += std::pow(std::fabs(x), p);
      m = std::max(m, std::fabs(x));
    }
    return std::isinf(p) ? m : std::pow(s, 1 / p);
  };
}
double g_lse(const Vals& g) {
  double s = 0;
  for (double x : g) s += std::exp(x);
  return std::log(s);
}
double g_var(const Vals& g, int64_t correction) {
  double m = g_mean(g), s = 0;
  for (double x : g) s += (x - m) * (x - m);
  return s / double(g.size() - correction);
}

OpRow row(std::string name, Shapes shapes, Builder fn, Reference ref) {
  OpRow r;
  r.name = std::move(name);
  r.shapes = std::move(shapes);
  r.fn = std::move(fn);
  r.reference = std::move(ref);
  return r;
}

OpRow reduce_row(std::string name, Shape shape, Shape axes, std::function<Tensor(const Tensor&)> op,
                 std::function<double(const Vals&)> f) {
  return row(name + " " + shape_str(shape) + " axes " + shape_str(axes), {shape},
             [op](const Tensors& x) { return op(x[0]); },
             [axes, f](const In& v, const Shapes& s) {
               Shape ax;
               for (auto a : axes) ax.push_back(a < 0 ? a + (int64_t)s[0].size() : a);
               return ref_reduce(v[0], s[0], ax, f);
             });
}

// Magnitudes well separated in [0.3, 2] with random signs: away from |x|'s kink at 0, and (for the
// infinity norm) no two equal magnitudes.
std::function<Tensors(uint64_t)> signed_distinct_inputs(Shape shape) {
  return [shape](uint64_t seed) {
    int64_t n = shape_numel(shape);
    Vals v(n);
    std::mt19937_64 rng(seed);
    for (int64_t i = 0; i < n; ++i) v[i] = (0.3 + 1.7 * (i + 0.5) / n) * (rng() % 2 ? 1 : -1);
    std::shuffle(v.begin(), v.end(), rng);
    return Tensors{from_vector(v, shape, DType::F64)};
  };
}

// Well-separated distinct values in shuffled order, so max has no ties even under finite differences.
std::function<Tensors(uint64_t)> distinct_inputs(Shape shape) {
  return [shape](uint64_t seed) {
    int64_t n = shape_numel(shape);
    Vals v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = -2 + 4 * (i + 0.5) / n;
    std::mt19937_64 rng(seed);
    std::shuffle(v.begin(), v.end(), rng);
    return Tensors{from_vector(v, shape, DType::F64)};
  };
}

std::vector<OpRow> reduction_rows() {
  std::vector<OpRow> r = {
      reduce_row("sum", {2, 3, 4}, {}, [](const Tensor& x) { return sum(x); }, g_sum),
      reduce_row("sum", {2, 3, 4}, {1}, [](const Tensor& x) { return sum(x, {1}); }, g_sum),
      reduce_row("sum", {2, 3, 4, 2}, {0, -1}, [](const Tensor& x) { return sum(x, {0, -1}); }, g_sum),
      reduce_row("sum keepdim", {3, 1, 4}, {0, 2}, [](const Tensor& x) { return sum(x, {0, 2}, true); }, g_sum),
      reduce_row("sum keepdim", {2, 1, 4}, {-1}, [](const Tensor& x) { return sum(x, {-1}, true); }, g_sum),
      reduce_row("mean", {2, 3, 4}, {-2}, [](const Tensor& x) { return mean(x, {-2}); }, g_mean),
      reduce_row("mean", {3, 1, 4}, {}, [](const Tensor& x) { return mean(x); }, g_mean),
      reduce_row("max", {2, 3, 4}, {1}, [](const Tensor& x) { return max(x, {1}); }, g_max),
      reduce_row("max", {2, 3, 4}, {}, [](const Tensor& x) { return max(x); }, g_max),
      reduce_row("max keepdim", {2, 3, 4}, {0, 2}, [](const Tensor& x) { return max(x, {0, 2}, true); }, g_max),
      reduce_row("min", {2, 3, 4}, {1}, [](const Tensor& x) { return min(x, {1}); }, g_min),
      reduce_row("min", {2, 3, 4}, {}, [](const Tensor& x) { return min(x); }, g_min),
      reduce_row("min keepdim", {2, 3, 4}, {0, 2}, [](const Tensor& x) { return min(x, {0, 2}, true); }, g_min),
      reduce_row("norm p=2", {2, 3, 4}, {1}, [](const Tensor& x) { return norm(x, 2, {1}); }, g_norm(2)),
      reduce_row("norm p=2", {3, 4}, {}, [](const Tensor& x) { return norm(x); }, g_norm(2)),
      reduce_row("norm p=1 keepdim", {2, 3, 4}, {0, 2}, [](const Tensor& x) { return norm(x, 1, {0, 2}, true); },
                 g_norm(1)),
      reduce_row("norm p=3", {2, 1, 4}, {-1}, [](const Tensor& x) { return norm(x, 3, {-1}); }, g_norm(3)),
      reduce_row("norm p=inf", {2, 3, 4}, {1, 2}, [](const Tensor& x) { return norm(x, INFINITY, {1, 2}); },
                 g_norm(INFINITY)),
      reduce_row("logsumexp", {2, 3, 4}, {-1}, [](const Tensor& x) { return logsumexp(x, {-1}); }, g_lse),
      reduce_row("logsumexp keepdim", {3, 4}, {0}, [](const Tensor& x) { return logsumexp(x, {0}, true); }, g_lse),
      reduce_row("var correction 0", {3, 5}, {1}, [](const Tensor& x) { return var(x, {1}); },
                 [](const Vals& g) { return g_var(g, 0); }),
      reduce_row("var correction 1", {2, 3, 4}, {0, 2}, [](const Tensor& x) { return var(x, {0, 2}, false, 1); },
                 [](const Vals& g) { return g_var(g, 1); }),
      reduce_row("var correction 1 keepdim", {4, 1, 3}, {-1},
                 [](const Tensor& x) { return var(x, {-1}, true, 1); }, [](const Vals& g) { return g_var(g, 1); }),
  };
  for (auto& x : r) {
    if (x.name.rfind("max", 0) == 0 || x.name.rfind("min", 0) == 0) x.make_inputs = distinct_inputs(x.shapes[0]);
    if (x.name.rfind("norm", 0) == 0) x.make_inputs = signed_distinct_inputs(x.shapes[0]);
    x.f32_rtol = 1e-4;
  }
  // Broadcast product then reduction: the reduced axis is a broadcast one for y.
  r.push_back(row("sum of broadcast product [2, 3, 4]*[3, 1] axes [0, 2]", {{2, 3, 4}, {3, 1}},
                  [](const Tensors& x) { return sum(mul(x[0], x[1]), {0, 2}); },
                  [](const In& v, const Shapes&) {
                    Vals out(3, 0.0);
                    for (int a = 0; a < 2; ++a)
                      for (int b = 0; b < 3; ++b)
                        for (int c = 0; c < 4; ++c) out[b] += v[0][(a * 3 + b) * 4 + c] * v[1][b];
                    return out;
                  }));
  r.push_back(row("sum_to [2, 3, 4] -> [3, 1]", {{2, 3, 4}}, [](const Tensors& x) { return sum_to(x[0], {3, 1}); },
                  [](const In& v, const Shapes&) {
                    Vals out(3, 0.0);
                    for (int k = 0; k < 24; ++k) out[(k / 4) % 3] += v[0][k];
                    return out;
                  }));
  r.push_back(row("sum_to [2, 3, 4] -> [1, 4]", {{2, 3, 4}}, [](const Tensors& x) { return sum_to(x[0], {1, 4}); },
                  [](const In& v, const Shapes&) {
                    Vals out(4, 0.0);
                    for (int k = 0; k < 24; ++k) out[k % 4] += v[0][k];
                    return out;
                  }));
  return r;
}

// Reference for permute: out[i] = x[j] with j[perm[d]] = i[d].
Reference permute_ref(Shape perm) {
  return [perm](const In& v, const Shapes& s) {
    Shape os;
    for (auto p : perm) os.push_back(s[0][p]);
    return ref_map(os, [&](const Idx& i) {
      Idx j(i.size());
      for (size_t d = 0; d < perm.size(); ++d) j[perm[d]] = i[d];
      return v[0][ravel(j, s[0])];
    });
  };
}

// Same values in the same flat order (reshape, flatten, squeeze ...).
Vals identity_ref(const In& v, const Shapes&) { return v[0]; }

std::vector<OpRow> view_rows() {
  std::vector<OpRow> r = {
      row("reshape [2, 3, 4] -> [4, -1]", {{2, 3, 4}}, [](const Tensors& x) { return reshape(x[0], {4, -1}); },
          identity_ref),
      row("reshape [6] -> [2, 1, 3]", {{6}}, [](const Tensors& x) { return reshape(x[0], {2, 1, 3}); },
          identity_ref),
      // A permuted tensor cannot be viewed as [4, 6]: reshape must copy.
      row("reshape of permuted (copies)", {{2, 3, 4}},
          [](const Tensors& x) { return reshape(permute(x[0], {2, 0, 1}), {4, 6}); }, permute_ref({2, 0, 1})),
      row("permute [2, 3, 4] (2, 0, 1)", {{2, 3, 4}}, [](const Tensors& x) { return permute(x[0], {2, 0, 1}); },
          permute_ref({2, 0, 1})),
      row("permute negative axes (-1, 0, 1)", {{2, 1, 3}},
          [](const Tensors& x) { return permute(x[0], {-1, 0, 1}); }, permute_ref({2, 0, 1})),
      row("transpose (0, -1)", {{2, 3, 4}}, [](const Tensors& x) { return transpose(x[0], 0, -1); },
          permute_ref({2, 1, 0})),
      row("broadcast_to [3, 1] -> [2, 3, 4]", {{3, 1}},
          [](const Tensors& x) { return broadcast_to(x[0], {2, 3, 4}); },
          [](const In& v, const Shapes&) { return ref_map({2, 3, 4}, [&](const Idx& i) { return v[0][i[1]]; }); }),
      row("broadcast_to [4] -> [3, 4] times x", {{4}},
          [](const Tensors& x) { return mul(broadcast_to(x[0], {3, 4}), x[0]); },
          [](const In& v, const Shapes&) {
            return ref_map({3, 4}, [&](const Idx& i) { return v[0][i[1]] * v[0][i[1]]; });
          }),
      row("flatten (1, -1)", {{2, 3, 4}}, [](const Tensors& x) { return flatten(x[0], 1, -1); }, identity_ref),
      row("flatten of transposed", {{2, 3}}, [](const Tensors& x) { return flatten(transpose(x[0], 0, 1)); },
          permute_ref({1, 0})),
      row("squeeze then unsqueeze", {{2, 1, 3}},
          [](const Tensors& x) { return unsqueeze(squeeze(x[0], 1), -1); }, identity_ref),
      row("copy of transposed", {{3, 4}}, [](const Tensors& x) { return copy(transpose(x[0], 0, 1)); },
          permute_ref({1, 0})),
  };
  // The round trip goes through the other float dtype, so f64 inputs get f32 rounding: a larger
  // finite-difference step keeps that rounding small against the step.
  OpRow c = row("cast round trip", {{3, 4}},
                [](const Tensors& x) {
                  DType other = x[0].dtype() == DType::F64 ? DType::F32 : DType::F64;
                  return cast(mul(cast(x[0], other), 2.0), x[0].dtype());
                },
                [](const In& v, const Shapes&) {
                  Vals out;
                  for (double x : v[0]) out.push_back(2.0 * double(float(x)));
                  return out;
                });
  c.tol = {1e-2, 1e-4, 1e-6};
  r.push_back(c);
  return r;
}

std::vector<OpRow> index_rows() {
  std::vector<OpRow> r;
  r.push_back(row("slice step 2 negative start", {{3, 8}},
                  [](const Tensors& x) { return slice(x[0], -1, -7, 8, 2); },
                  [](const In& v, const Shapes&) {
                    return ref_map({3, 4}, [&](const Idx& i) { return v[0][i[0] * 8 + 1 + 2 * i[1]]; });
                  }));
  r.push_back(row("slice clamped end, then times x slice", {{5, 2, 3}},
                  [](const Tensors& x) { return mul(slice(x[0], 0, 2, 100), slice(x[0], 0, 0, 3)); },
                  [](const In& v, const Shapes&) {
                    return ref_map({3, 2, 3}, [&](const Idx& i) {
                      return v[0][((i[0] + 2) * 2 + i[1]) * 3 + i[2]] * v[0][(i[0] * 2 + i[1]) * 3 + i[2]];
                    });
                  }));
  r.push_back(row("slice step 3 of transposed", {{4, 7}},
                  [](const Tensors& x) { return slice(transpose(x[0], 0, 1), 0, 1, 7, 3); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 4}, [&](const Idx& i) { return v[0][i[1] * 7 + 1 + 3 * i[0]]; });
                  }));
  r.push_back(row("narrow axis 1 (1, 2)", {{2, 4, 3}}, [](const Tensors& x) { return narrow(x[0], 1, 1, 2); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 2, 3}, [&](const Idx& i) { return v[0][(i[0] * 4 + i[1] + 1) * 3 + i[2]]; });
                  }));
  r.push_back(row("index_select axis 0 repeated", {{4, 3}},
                  [](const Tensors& x) { return index_select(x[0], 0, {2, 0, 2, 3, 2}); },
                  [](const In& v, const Shapes&) {
                    int64_t idx[] = {2, 0, 2, 3, 2};
                    return ref_map({5, 3}, [&](const Idx& i) { return v[0][idx[i[0]] * 3 + i[1]]; });
                  }));
  r.push_back(row("index_select axis -1 repeated, squared", {{2, 1, 4}},
                  [](const Tensors& x) { return square(index_select(x[0], -1, {3, 3, 1})); },
                  [](const In& v, const Shapes&) {
                    int64_t idx[] = {3, 3, 1};
                    return ref_map({2, 1, 3}, [&](const Idx& i) {
                      double a = v[0][i[0] * 4 + idx[i[2]]];
                      return a * a;
                    });
                  }));
  r.push_back(row("cat 3 inputs axis 1", {{2, 1, 3}, {2, 3, 3}, {2, 2, 3}},
                  [](const Tensors& x) { return cat({x[0], x[1], x[2]}, 1); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 6, 3}, [&](const Idx& i) {
                      int64_t j = i[1];
                      if (j < 1) return v[0][(i[0] * 1 + j) * 3 + i[2]];
                      if (j < 4) return v[1][(i[0] * 3 + j - 1) * 3 + i[2]];
                      return v[2][(i[0] * 2 + j - 4) * 3 + i[2]];
                    });
                  }));
  r.push_back(row("cat transposed with product, axis -1", {{3, 2}, {2, 3}},
                  [](const Tensors& x) { return cat({transpose(x[0], 0, 1), mul(x[1], x[1]), x[1]}, -1); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 9}, [&](const Idx& i) {
                      int64_t j = i[1];
                      if (j < 3) return v[0][j * 2 + i[0]];
                      if (j < 6) return v[1][i[0] * 3 + j - 3] * v[1][i[0] * 3 + j - 3];
                      return v[1][i[0] * 3 + j - 6];
                    });
                  }));
  r.push_back(row("stack 3 inputs axis 1", {{2, 3}, {2, 3}, {2, 3}},
                  [](const Tensors& x) { return stack({x[0], x[1], x[2]}, 1); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 3, 3}, [&](const Idx& i) { return v[i[1]][i[0] * 3 + i[2]]; });
                  }));
  r.push_back(row("stack axis -1", {{3}, {3}}, [](const Tensors& x) { return stack({x[0], mul(x[0], x[1])}, -1); },
                  [](const In& v, const Shapes&) {
                    return ref_map({3, 2}, [&](const Idx& i) {
                      return i[1] == 0 ? v[0][i[0]] : v[0][i[0]] * v[1][i[0]];
                    });
                  }));
  // Multi-output ops become one output: each piece scaled by its own constant, then cat.
  r.push_back(row("split (1, 3, 2) axis -1", {{2, 6}},
                  [](const Tensors& x) {
                    Tensors p = split(x[0], {1, 3, 2}, -1);
                    return cat({mul(p[0], 2.0), mul(p[1], -3.0), mul(p[2], 5.0)}, -1);
                  },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 6}, [&](const Idx& i) {
                      double c = i[1] < 1 ? 2.0 : i[1] < 4 ? -3.0 : 5.0;
                      return c * v[0][i[0] * 6 + i[1]];
                    });
                  }));
  // One op with three outputs whose middle one is unused: its cotangent is a zero block in the cat.
  r.push_back(row("split (2, 1, 3) axis 1, middle piece unused", {{3, 6, 2}},
                  [](const Tensors& x) {
                    Tensors p = split(x[0], {2, 1, 3}, 1);
                    return cat({mul(p[0], p[0]), mul(p[2], -2.0)}, 1);
                  },
                  [](const In& v, const Shapes&) {
                    return ref_map({3, 5, 2}, [&](const Idx& i) {
                      int64_t src = i[1] < 2 ? i[1] : i[1] + 1;
                      double x = v[0][(i[0] * 6 + src) * 2 + i[2]];
                      return i[1] < 2 ? x * x : -2.0 * x;
                    });
                  }));
  r.push_back(row("chunk 3 of 5 axis 0", {{5, 2}},
                  [](const Tensors& x) {
                    Tensors p = chunk(x[0], 3, 0);  // sizes 2, 2, 1
                    return cat({mul(p[0], 2.0), mul(p[1], -3.0), mul(p[2], 5.0)}, 0);
                  },
                  [](const In& v, const Shapes&) {
                    return ref_map({5, 2}, [&](const Idx& i) {
                      double c = i[0] < 2 ? 2.0 : i[0] < 4 ? -3.0 : 5.0;
                      return c * v[0][i[0] * 2 + i[1]];
                    });
                  }));
  r.push_back(row("pad (1, 2, 0, 1) value 0.5", {{2, 3, 4}},
                  [](const Tensors& x) { return pad(x[0], {1, 2, 0, 1}, 0.5); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 4, 7}, [&](const Idx& i) {
                      int64_t b = i[1], c = i[2] - 1;
                      return b < 3 && c >= 0 && c < 4 ? v[0][(i[0] * 3 + b) * 4 + c] : 0.5;
                    });
                  }));
  r.push_back(row("pad negative (crop 1, pad 2) of transposed", {{4, 3}},
                  [](const Tensors& x) { return pad(transpose(x[0], 0, 1), {-1, 2}); },
                  [](const In& v, const Shapes&) {
                    return ref_map({3, 5}, [&](const Idx& i) {
                      int64_t c = i[1] + 1;
                      return c < 4 ? v[0][c * 3 + i[0]] : 0.0;
                    });
                  }));
  r.push_back(row("flip axes (0, -1)", {{2, 3, 4}}, [](const Tensors& x) { return flip(x[0], {0, -1}); },
                  [](const In& v, const Shapes&) {
                    return ref_map({2, 3, 4}, [&](const Idx& i) { return v[0][((1 - i[0]) * 3 + i[1]) * 4 + 3 - i[2]]; });
                  }));
  r.push_back(row("flip size-1 and middle axes times x", {{3, 1, 2}},
                  [](const Tensors& x) { return mul(flip(x[0], {1, 0}), x[0]); },
                  [](const In& v, const Shapes&) {
                    return ref_map({3, 1, 2}, [&](const Idx& i) {
                      return v[0][(2 - i[0]) * 2 + i[2]] * v[0][i[0] * 2 + i[2]];
                    });
                  }));
  return r;
}

RegisterRows reg_reduce(reduction_rows());
RegisterRows reg_view(view_rows());
RegisterRows reg_index(index_rows());

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("shape ops: slice is a view sharing storage with its base") {
  Tensor x = arange(0, 12, 1, DType::F64);
  Tensor b = reshape(x, {3, 4});
  Tensor s = slice(b, 1, 1, 4, 2);  // columns 1 and 3
  REQUIRE(s.shape() == Shape{3, 2});
  CHECK(s.to_vector() == Vals{1, 3, 5, 7, 9, 11});
  x.data_as<double>()[7] = -70;  // row 1, column 3
  CHECK(s.to_vector()[3] == -70);
  Tensor n = narrow(b, 0, 2, 1);
  x.data_as<double>()[8] = 80;
  CHECK(n.to_vector()[0] == 80);
}

TEST_CASE("shape ops: output shapes and piece sizes") {
  Tensor x = zeros({2, 5, 3}, DType::F64);
  CHECK(slice(x, 1, -2, 100).shape() == Shape{2, 2, 3});
  CHECK(slice(x, 1, 4, 1).shape() == Shape{2, 0, 3});
  CHECK(slice(x, 1, 0, 5, 3).shape() == Shape{2, 2, 3});
  CHECK(cat({x, x}, -1).shape() == Shape{2, 5, 6});
  CHECK(stack({x, x}, 3).shape() == Shape{2, 5, 3, 2});
  CHECK(pad(x, {1, 1, 2, 0}).shape() == Shape{2, 7, 5});
  CHECK(index_select(x, 1, {4, 4, 0, 1}).shape() == Shape{2, 4, 3});
  Tensors c = chunk(x, 2, 1);
  REQUIRE(c.size() == 2);
  CHECK(c[0].shape() == Shape{2, 3, 3});
  CHECK(c[1].shape() == Shape{2, 2, 3});
  CHECK(chunk(x, 4, 1).size() == 3);  // pieces of 2: 2, 2, 1
}

TEST_CASE("shape ops: index_select's gradient adds repeated indices (index_add)") {
  Tensor x = from_vector({1, 2, 3, 4}, {4}, DType::F64).requires_grad_();
  Tensor y = index_select(x, 0, {1, 1, 3, 1});
  sum(mul(y, from_vector({1, 10, 100, 1000}, {4}, DType::F64))).backward();
  CHECK(x.grad().to_vector() == Vals{0, 1011, 0, 100});
}

TEST_CASE("shape ops: bad inputs raise df::Error naming the op and shapes") {
  Tensor x = zeros({2, 3}), y = zeros({2, 4});
  std::string e = error_of([&] { cat({x, y}, 0); });
  CHECK(has(e, "cat:"));
  CHECK(has(e, "[2, 4]"));
  CHECK(has(error_of([&] { cat({x, zeros({2, 3}, DType::F64)}, 1); }), "cat:"));
  CHECK(has(error_of([&] { cat({}, 0); }), "cat:"));
  CHECK(has(error_of([&] { slice(x, 2, 0, 1); }), "slice:"));
  CHECK(has(error_of([&] { slice(x, 0, 0, 1, 0); }), "slice:"));
  CHECK(has(error_of([&] { narrow(x, 1, 2, 2); }), "narrow:"));
  e = error_of([&] { index_select(x, 1, {0, 3}); });
  CHECK(has(e, "index_select:"));
  CHECK(has(e, "[2, 3]"));
  CHECK(has(error_of([&] { index_select(x, -3, {0}); }), "index_select:"));
  CHECK(has(error_of([&] { stack({x, y}, 0); }), "stack:"));
  CHECK(has(error_of([&] { split(x, {1, 1}, 1); }), "split:"));
  CHECK(has(error_of([&] { chunk(x, 0, 1); }), "chunk:"));
  e = error_of([&] { pad(x, {1, 1, 1}); });
  CHECK(has(e, "pad:"));
  CHECK(has(e, "[2, 3]"));
  CHECK(has(error_of([&] { pad(x, {1, 1, 1, 1, 1, 1}); }), "pad:"));
  CHECK(has(error_of([&] { pad(x, {-2, -2}); }), "pad:"));
  CHECK(has(error_of([&] { flip(x, {0, -2}); }), "flip:"));
  CHECK_THROWS_AS(flip(x, {2}), Error);
}
