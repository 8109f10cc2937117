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

}  // namespace

Tensor mse_loss(const Tensor& pred_in, const Tensor& target_in) {
  const Tensor pred = autocast_full(pred_in), target = autocast_full(target_in);
  check_same(pred, target, "mse_loss");
  DF_CHECK(pred.numel() > 0, "mse_loss: empty input ", pred.desc());
  return mean(square(sub(pred, target)));
}

Tensor pseudo_huber_loss(const Tensor& pred_in, const Tensor& target_in, double c) {
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
  return mean(add(sqrt(add(n2, c * c)), -c));
}

Tensor cross_entropy(const Tensor& logits_in, const std::vector<int64_t>& labels) {
  const Tensor logits = autocast_full(logits_in);
  DF_CHECK(logits.defined() && logits.dim() == 2, "cross_entropy: logits must be (B, K), got ", logits.desc());
  int64_t B = logits.size(0), K = logits.size(1);
  DF_CHECK((int64_t)labels.size() == B, "cross_entropy: ", labels.size(), " labels for a batch of ", B, " (logits ",
           logits.desc(), ")");
  DF_CHECK(B > 0, "cross_entropy: empty batch ", logits.desc());
  // The label picks one log-probability per row: a constant one-hot mask keeps it a plain product.
  std::vector<double> onehot(B * K, 0.0);
  for (int64_t i = 0; i < B; ++i) {
    DF_CHECK(labels[i] >= 0 && labels[i] < K, "cross_entropy: label ", labels[i], " at index ", i,
             " is out of range for ", K, " classes");
    onehot[i * K + labels[i]] = 1.0;
  }
  Tensor mask = from_vector(onehot, {B, K}, logits.dtype(), logits.device());
  return mul(sum(mul(log_softmax(logits, 1), mask)), -1.0 / double(B));
}

}  // namespace df
