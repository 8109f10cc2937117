// Losses as compositions of public ops: their derivatives of every order come from the parts.
#include "ops/autocast.h"
#include "ops/rules.h"

namespace df {

namespace {

void check_same(const Tensor& pred, const Tensor& target, const char* op) {
  DF_CHECK(pred.defined() && target.defined(), op, ": prediction or target is undefined");
  DF_CHECK(pred.shape() == target.shape(), op, ": prediction ", pred.desc(), " and target ", target.desc(),
           " differ in shape");
  DF_CHECK(pred.dtype() == target.dtype() && pred.device() == target.device(), op, ": prediction ", pred.desc(),
           " and target ", target.desc(), " differ in dtype or device");
}

// The chosen reduction of per-element or per-sample values.
Tensor reduce_loss(const Tensor& values, Reduction reduction) {
  switch (reduction) {
    case Reduction::None: return values;
    case Reduction::Sum: return sum(values);
    case Reduction::Mean: break;
  }
  return mean(values);
}

}  // namespace

Tensor mse_loss(const Tensor& pred_in, const Tensor& target_in, Reduction reduction) {
  const Tensor pred = autocast_full(pred_in), target = autocast_full(target_in);
  check_same(pred, target, "mse_loss");
  DF_CHECK(pred.numel() > 0 || reduction != Reduction::Mean, "mse_loss: empty input ", pred.desc());
  return reduce_loss(square(sub(pred, target)), reduction);
}

Tensor pseudo_huber_loss(const Tensor& pred_in, const Tensor& target_in, double c, Reduction reduction) {
  const Tensor pred = autocast_full(pred_in), target = autocast_full(target_in);
  check_same(pred, target, "pseudo_huber_loss");
  DF_CHECK(pred.dim() >= 1 && pred.size(0) > 0, "pseudo_huber_loss: needs a non-empty batch dim, got ",
           pred.desc());
  DF_CHECK(c >= 0, "pseudo_huber_loss: c must be >= 0, got ", c);
  Tensor sq = square(sub(pred, target));
  // Per-sample squared norm over all non-batch dims; a 1-D input has one element per sample.
  Shape axes;
  for (int64_t d = 1; d < pred.dim(); ++d) axes.push_back(d);
  Tensor n2 = axes.empty() ? sq : sum(sq, axes);
  return reduce_loss(add(sqrt(add(n2, c * c)), -c), reduction);
}

namespace {
void check_logits(const Tensor& logits) {
  DF_CHECK(logits.defined() && logits.dim() == 2, "cross_entropy: logits must be (B, K), got ",
           logits.defined() ? logits.desc() : std::string("undefined"));
  DF_CHECK(logits.size(0) > 0, "cross_entropy: empty batch ", logits.desc());
}
}  // namespace

Tensor cross_entropy(const Tensor& logits_in, const std::vector<int64_t>& labels, Reduction reduction) {
  const Tensor logits = autocast_full(logits_in);
  check_logits(logits);
  int64_t B = logits.size(0), K = logits.size(1);
  DF_CHECK((int64_t)labels.size() == B, "cross_entropy: ", labels.size(), " labels for a batch of ", B, " (logits ",
           logits.desc(), ")");
  // The label picks one log-probability per row: a constant one-hot mask keeps it a plain product.
  std::vector<double> onehot(B * K, 0.0);
  for (int64_t i = 0; i < B; ++i) {
    DF_CHECK(labels[i] >= 0 && labels[i] < K, "cross_entropy: label ", labels[i], " at index ", i,
             " is out of range for ", K, " classes");
    onehot[i * K + labels[i]] = 1.0;
  }
  Tensor mask = from_vector(onehot, {B, K}, logits.dtype(), logits.device());
  Tensor picked = mul(log_softmax(logits, 1), mask);
  if (reduction == Reduction::Mean) return mul(sum(picked), -1.0 / double(B));  // one reduction, as before
  return reduce_loss(neg(sum(picked, {1})), reduction);
}

// Labels as an i64 tensor stay on the device: a gather picks each row's log-probability.
Tensor cross_entropy(const Tensor& logits_in, const Tensor& labels, Reduction reduction) {
  const Tensor logits = autocast_full(logits_in);
  check_logits(logits);
  return reduce_loss(neg(pick_labels(log_softmax(logits, 1), labels)), reduction);
}

}  // namespace df
