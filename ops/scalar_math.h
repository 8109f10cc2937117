// Scalar math written once: host/device functors shared by the CPU loops and the CUDA kernels,
// so the two backends cannot drift. Derivatives are NOT here: rules express them with ops.
#pragma once
#include <cmath>

#include "core/dtype.h"

namespace df {

// X(kind, expression in x with parameters a, b). T is float or double. NaN propagates as in
// PyTorch: relu, maximum, minimum and clamp return NaN for a NaN input (a NaN comparison is false).
#define DF_UNARY_FUNCTORS(X)                                              \
  X(Neg, -x)                                                              \
  X(Exp, std::exp(x))                                                     \
  X(Expm1, std::expm1(x))                                                 \
  X(Log, std::log(x))                                                     \
  X(Log1p, std::log1p(x))                                                 \
  X(Erf, std::erf(x))                                                     \
  X(Sin, std::sin(x))                                                     \
  X(Cos, std::cos(x))                                                     \
  X(Tan, std::tan(x))                                                     \
  X(Atan, std::atan(x))                                                   \
  X(Tanh, std::tanh(x))                                                   \
  X(Sigmoid, T(1) / (T(1) + std::exp(-x)))                                \
  X(Relu, (x > T(0) || x != x) ? x : T(0))                                \
  X(LeakyRelu, x > T(0) ? x : x * T(a))                                   \
  X(Elu, x > T(0) ? x : T(a) * std::expm1(x))                             \
  X(Silu, x / (T(1) + std::exp(-x)))                                      \
  X(SiluGrad, (T(1) + x * (T(1) - T(1) / (T(1) + std::exp(-x)))) / (T(1) + std::exp(-x))) \
  X(Gelu, T(0.5) * x * (T(1) + std::tanh(T(0.7978845608028654) * (x + T(0.044715) * x * x * x)))) \
  X(GeluExact, T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476))))  \
  X(Softplus, x > T(20) ? x : std::log1p(std::exp(x)))                    \
  X(Sqrt, std::sqrt(x))                                                   \
  X(Rsqrt, T(1) / std::sqrt(x))                                           \
  X(Square, x * x)                                                        \
  X(Abs, std::fabs(x))                                                    \
  X(Sign, T(x > T(0)) - T(x < T(0)))                                      \
  X(Step, x > T(0) ? T(1) : T(0))                                         \
  X(Clamp, x < T(a) ? T(a) : (x > T(b) ? T(b) : x))                       \
  X(InRange, (x >= T(a) && x <= T(b)) ? T(1) : T(0))                      \
  X(PowScalar, std::pow(x, T(a)))                                         \
  X(AddScalar, x + T(a))                                                  \
  X(MulScalar, x * T(a))                                                  \
  X(RsubScalar, T(a) - x)                                                 \
  X(DivScalarBy, T(a) / x)                                                \
  X(IsFinite, std::isfinite(x) ? T(1) : T(0))

enum class UnaryKind {
#define DF_ENUM(name, expr) name,
  DF_UNARY_FUNCTORS(DF_ENUM)
#undef DF_ENUM
};

#define DF_FUNCTOR(name, expr)                                            \
  struct name##F {                                                        \
    double a, b;                                                          \
    template <class T> DF_HD T operator()(T x) const { return expr; }     \
  };
DF_UNARY_FUNCTORS(DF_FUNCTOR)
#undef DF_FUNCTOR

#define DF_BINARY_FUNCTORS(X)                  \
  X(Add, x + y)                                \
  X(Sub, x - y)                                \
  X(Mul, x * y)                                \
  X(Div, x / y)                                \
  X(Pow, std::pow(x, y))                       \
  X(Maximum, (x >= y || x != x) ? x : y)       \
  X(Minimum, (x <= y || x != x) ? x : y)       \
  X(Gt, x > y ? T(1) : T(0))                   \
  X(Lt, x < y ? T(1) : T(0))                   \
  X(Ge, x >= y ? T(1) : T(0))

enum class BinaryKind {
#define DF_ENUM(name, expr) name,
  DF_BINARY_FUNCTORS(DF_ENUM)
#undef DF_ENUM
};

#define DF_FUNCTOR(name, expr)                                            \
  struct name##BF {                                                       \
    template <class T> DF_HD T operator()(T x, T y) const { return expr; } \
  };
DF_BINARY_FUNCTORS(DF_FUNCTOR)
#undef DF_FUNCTOR

}  // namespace df
