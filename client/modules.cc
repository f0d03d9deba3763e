// state_dict / load_state_dict for modules and optimizers in PyTorch's own
// layout, and training-checkpoint helpers.

#include <torch/nn/module.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <set>
#include <sstream>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "client/torch_tree.h"
#include "common/names.h"
#include "common/status_macros.h"

namespace ckpt::client {
namespace {

void Collect(const torch::nn::Module& module, const std::string& prefix,
             c10::Dict<std::string, at::Tensor>* out) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    out->insert(prefix + p.key(), p.value().detach());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    out->insert(prefix + b.key(), b.value().detach());
  }
  for (const auto& child : module.named_children()) {
    Collect(*child.value(), prefix + child.key() + ".", out);
  }
}

std::string Shape(c10::IntArrayRef sizes) {
  return ShapeText(absl::Span<const int64_t>(sizes.data(), sizes.size()));
}

}  // namespace

c10::Dict<std::string, at::Tensor> StateDict(const torch::nn::Module& module) {
  c10::Dict<std::string, at::Tensor> out;
  Collect(module, "", &out);
  return out;
}

absl::StatusOr<IncompatibleKeys> LoadStateDict(torch::nn::Module& module,
                                               const c10::Dict<std::string, at::Tensor>& state,
                                               bool strict) {
  c10::Dict<std::string, at::Tensor> own = StateDict(module);
  IncompatibleKeys result;
  std::vector<std::string> mismatches;
  for (const auto& entry : own) {
    if (!state.contains(entry.key())) result.missing_keys.push_back(entry.key());
  }
  for (const auto& entry : state) {
    auto it = own.find(entry.key());
    if (it == own.end()) {
      result.unexpected_keys.push_back(entry.key());
      continue;
    }
    const at::Tensor& dst = it->value();
    const at::Tensor& src = entry.value();
    if (dst.sizes() != src.sizes() || dst.scalar_type() != src.scalar_type()) {
      mismatches.push_back(absl::StrCat("size or dtype mismatch for ", entry.key(),
                                        ": copying a param with shape ", Shape(src.sizes()), " ",
                                        c10::toString(src.scalar_type()),
                                        " from checkpoint, the shape in current model is ",
                                        Shape(dst.sizes()), " ", c10::toString(dst.scalar_type())));
    }
  }
  if (!mismatches.empty()) return absl::InvalidArgumentError(absl::StrJoin(mismatches, "; "));
  if (strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty())) {
    return absl::FailedPreconditionError(
        absl::StrCat("Error(s) in loading state_dict: Missing key(s): [",
                     absl::StrJoin(result.missing_keys, ", "), "]. Unexpected key(s): [",
                     absl::StrJoin(result.unexpected_keys, ", "), "]"));
  }
  torch::NoGradGuard no_grad;
  try {
    for (const auto& entry : state) {
      auto it = own.find(entry.key());
      if (it != own.end()) it->value().copy_(entry.value());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  return result;
}

absl::StatusOr<IncompatibleKeys> LoadStateDict(torch::nn::Module& module, const c10::IValue& state,
                                               bool strict) {
  if (!state.isGenericDict()) return absl::InvalidArgumentError("state_dict is not a dict");
  c10::Dict<std::string, at::Tensor> typed;
  for (const auto& entry : state.toGenericDict()) {
    if (!entry.key().isString() || !entry.value().isTensor()) {
      return absl::InvalidArgumentError("state_dict must map str keys to tensors");
    }
    typed.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return LoadStateDict(module, typed, strict);
}

// ---------------------------------------------------------------- optimizers

namespace {

using torch::optim::Optimizer;
using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;

// LibTorch keys optimizer state by the parameter's TensorImpl: as a string
// of its address up to 1.13, as the pointer itself in 2.x.
using StateMap = std::remove_reference_t<decltype(std::declval<Optimizer&>().state())>;
using StateKeyType = typename StateMap::key_type;

template <typename K>
K MakeStateKey(void* impl) {
  if constexpr (std::is_same_v<K, std::string>) {
    std::ostringstream out;  // what c10::guts::to_string(ptr) printed
    out << impl;
    return out.str();
  } else {
    return impl;
  }
}

StateKeyType StateKey(const at::Tensor& param) {
  return MakeStateKey<StateKeyType>(param.unsafeGetTensorImpl());
}

// A float32 0-dim tensor holding a step count: how PyTorch >= 1.12 stores
// "step" for Adam, AdamW, Adagrad (and RMSprop in 2.x).
at::Tensor StepTensor(int64_t step) {
  return at::scalar_tensor(static_cast<double>(step), at::kFloat);
}

absl::StatusOr<int64_t> StepOf(const c10::IValue& v) {
  if (v.isInt()) return v.toInt();
  if (v.isDouble()) return static_cast<int64_t>(v.toDouble());
  if (v.isTensor() && v.toTensor().numel() == 1) {
    return static_cast<int64_t>(v.toTensor().item<double>());
  }
  return absl::InvalidArgumentError("optimizer state 'step' is not a number");
}

using Entries = std::vector<std::pair<std::string, c10::IValue>>;

c10::IValue MakeDict(const Entries& entries) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  for (const auto& [k, v] : entries) dict.insert(k, v);
  return dict;
}

// Per-optimizer knowledge: hyperparameters of a group and per-parameter state
// in PyTorch's names, both ways.
struct Codec {
  std::function<Entries(const OptimizerOptions&)> group;
  std::function<Entries(const OptimizerParamState&)> state;
  std::function<absl::Status(const c10::impl::GenericDict&, OptimizerOptions&)> load_group;
  std::function<absl::StatusOr<std::unique_ptr<OptimizerParamState>>(const c10::impl::GenericDict&)>
      load_state;
};

absl::StatusOr<c10::IValue> Get(const c10::impl::GenericDict& d, const std::string& key) {
  auto it = d.find(key);
  if (it == d.end()) return absl::InvalidArgumentError(absl::StrCat("missing '", key, "'"));
  return it->value();
}

absl::StatusOr<double> GetDouble(const c10::impl::GenericDict& d, const std::string& key) {
  CKPT_ASSIGN_OR_RETURN(c10::IValue v, Get(d, key));
  if (v.isDouble()) return v.toDouble();
  if (v.isInt()) return static_cast<double>(v.toInt());
  return absl::InvalidArgumentError(absl::StrCat("'", key, "' is not a number"));
}

absl::StatusOr<bool> GetBool(const c10::impl::GenericDict& d, const std::string& key) {
  CKPT_ASSIGN_OR_RETURN(c10::IValue v, Get(d, key));
  if (v.isBool()) return v.toBool();
  return absl::InvalidArgumentError(absl::StrCat("'", key, "' is not a bool"));
}

absl::StatusOr<at::Tensor> GetTensor(const c10::impl::GenericDict& d, const std::string& key) {
  CKPT_ASSIGN_OR_RETURN(c10::IValue v, Get(d, key));
  if (v.isTensor()) return v.toTensor();
  return absl::InvalidArgumentError(absl::StrCat("'", key, "' is not a tensor"));
}

// Optional tensor: undefined if absent or None.
at::Tensor GetOptionalTensor(const c10::impl::GenericDict& d, const std::string& key) {
  auto it = d.find(key);
  if (it == d.end() || !it->value().isTensor()) return at::Tensor();
  return it->value().toTensor();
}

// The flags PyTorch adds to every group, with their defaults.
void CommonFlags(Entries* e, bool with_capturable) {
  e->emplace_back("foreach", c10::IValue());
  e->emplace_back("maximize", false);
  if (with_capturable) e->emplace_back("capturable", false);
  e->emplace_back("differentiable", false);
}

template <typename Opts, typename State>
Codec AdamLike() {
  Codec c;
  c.group = [](const OptimizerOptions& base) {
    const auto& o = static_cast<const Opts&>(base);
    Entries e = {
        {"lr", o.lr()},
        {"betas", c10::ivalue::Tuple::create({std::get<0>(o.betas()), std::get<1>(o.betas())})},
        {"eps", o.eps()},
        {"weight_decay", o.weight_decay()},
        {"amsgrad", o.amsgrad()}};
    CommonFlags(&e, true);
    e.emplace_back("fused", c10::IValue());
    return e;
  };
  c.state = [](const OptimizerParamState& base) {
    const auto& s = static_cast<const State&>(base);
    Entries e = {
        {"step", StepTensor(s.step())}, {"exp_avg", s.exp_avg()}, {"exp_avg_sq", s.exp_avg_sq()}};
    if (s.max_exp_avg_sq().defined()) e.emplace_back("max_exp_avg_sq", s.max_exp_avg_sq());
    return e;
  };
  c.load_group = [](const c10::impl::GenericDict& d, OptimizerOptions& base) -> absl::Status {
    auto& o = static_cast<Opts&>(base);
    CKPT_ASSIGN_OR_RETURN(double lr, GetDouble(d, "lr"));
    CKPT_ASSIGN_OR_RETURN(double eps, GetDouble(d, "eps"));
    CKPT_ASSIGN_OR_RETURN(double wd, GetDouble(d, "weight_decay"));
    CKPT_ASSIGN_OR_RETURN(bool amsgrad, GetBool(d, "amsgrad"));
    CKPT_ASSIGN_OR_RETURN(c10::IValue betas, Get(d, "betas"));
    std::vector<c10::IValue> b;
    if (betas.isTuple()) b = betas.toTupleRef().elements().vec();
    if (betas.isList()) b = betas.toListRef().vec();
    if (b.size() != 2 || !b[0].isDouble() || !b[1].isDouble()) {
      return absl::InvalidArgumentError("'betas' must be two floats");
    }
    o.lr(lr).eps(eps).weight_decay(wd).amsgrad(amsgrad).betas(
        std::make_tuple(b[0].toDouble(), b[1].toDouble()));
    return absl::OkStatus();
  };
  c.load_state =
      [](const c10::impl::GenericDict& d) -> absl::StatusOr<std::unique_ptr<OptimizerParamState>> {
    auto s = std::make_unique<State>();
    CKPT_ASSIGN_OR_RETURN(c10::IValue step, Get(d, "step"));
    CKPT_ASSIGN_OR_RETURN(int64_t n, StepOf(step));
    CKPT_ASSIGN_OR_RETURN(at::Tensor exp_avg, GetTensor(d, "exp_avg"));
    CKPT_ASSIGN_OR_RETURN(at::Tensor exp_avg_sq, GetTensor(d, "exp_avg_sq"));
    s->step(n);
    s->exp_avg(exp_avg);
    s->exp_avg_sq(exp_avg_sq);
    s->max_exp_avg_sq(GetOptionalTensor(d, "max_exp_avg_sq"));
    return std::unique_ptr<OptimizerParamState>(std::move(s));
  };
  return c;
}

Codec SgdCodec() {
  using torch::optim::SGDOptions;
  using torch::optim::SGDParamState;
  Codec c;
  c.group = [](const OptimizerOptions& base) {
    const auto& o = static_cast<const SGDOptions&>(base);
    Entries e = {{"lr", o.lr()},
                 {"momentum", o.momentum()},
                 {"dampening", o.dampening()},
                 {"weight_decay", o.weight_decay()},
                 {"nesterov", o.nesterov()}};
    CommonFlags(&e, false);
    return e;
  };
  c.state = [](const OptimizerParamState& base) {
    const auto& s = static_cast<const SGDParamState&>(base);
    return Entries{{"momentum_buffer", s.momentum_buffer().defined()
                                           ? c10::IValue(s.momentum_buffer())
                                           : c10::IValue()}};
  };
  c.load_group = [](const c10::impl::GenericDict& d, OptimizerOptions& base) -> absl::Status {
    auto& o = static_cast<SGDOptions&>(base);
    CKPT_ASSIGN_OR_RETURN(double lr, GetDouble(d, "lr"));
    CKPT_ASSIGN_OR_RETURN(double momentum, GetDouble(d, "momentum"));
    CKPT_ASSIGN_OR_RETURN(double dampening, GetDouble(d, "dampening"));
    CKPT_ASSIGN_OR_RETURN(double wd, GetDouble(d, "weight_decay"));
    CKPT_ASSIGN_OR_RETURN(bool nesterov, GetBool(d, "nesterov"));
    o.lr(lr).momentum(momentum).dampening(dampening).weight_decay(wd).nesterov(nesterov);
    return absl::OkStatus();
  };
  c.load_state =
      [](const c10::impl::GenericDict& d) -> absl::StatusOr<std::unique_ptr<OptimizerParamState>> {
    auto s = std::make_unique<SGDParamState>();
    s->momentum_buffer(GetOptionalTensor(d, "momentum_buffer"));
    return std::unique_ptr<OptimizerParamState>(std::move(s));
  };
  return c;
}

Codec AdagradCodec() {
  using torch::optim::AdagradOptions;
  using torch::optim::AdagradParamState;
  Codec c;
  c.group = [](const OptimizerOptions& base) {
    const auto& o = static_cast<const AdagradOptions&>(base);
    Entries e = {{"lr", o.lr()},
                 {"lr_decay", o.lr_decay()},
                 {"weight_decay", o.weight_decay()},
                 {"initial_accumulator_value", o.initial_accumulator_value()},
                 {"eps", o.eps()}};
    CommonFlags(&e, false);
    return e;
  };
  c.state = [](const OptimizerParamState& base) {
    const auto& s = static_cast<const AdagradParamState&>(base);
    return Entries{{"step", StepTensor(s.step())}, {"sum", s.sum()}};
  };
  c.load_group = [](const c10::impl::GenericDict& d, OptimizerOptions& base) -> absl::Status {
    auto& o = static_cast<AdagradOptions&>(base);
    CKPT_ASSIGN_OR_RETURN(double lr, GetDouble(d, "lr"));
    CKPT_ASSIGN_OR_RETURN(double lr_decay, GetDouble(d, "lr_decay"));
    CKPT_ASSIGN_OR_RETURN(double wd, GetDouble(d, "weight_decay"));
    CKPT_ASSIGN_OR_RETURN(double init, GetDouble(d, "initial_accumulator_value"));
    CKPT_ASSIGN_OR_RETURN(double eps, GetDouble(d, "eps"));
    o.lr(lr).lr_decay(lr_decay).weight_decay(wd).initial_accumulator_value(init).eps(eps);
    return absl::OkStatus();
  };
  c.load_state =
      [](const c10::impl::GenericDict& d) -> absl::StatusOr<std::unique_ptr<OptimizerParamState>> {
    auto s = std::make_unique<AdagradParamState>();
    CKPT_ASSIGN_OR_RETURN(c10::IValue step, Get(d, "step"));
    CKPT_ASSIGN_OR_RETURN(int64_t n, StepOf(step));
    CKPT_ASSIGN_OR_RETURN(at::Tensor sum, GetTensor(d, "sum"));
    s->step(n);
    s->sum(sum);
    return std::unique_ptr<OptimizerParamState>(std::move(s));
  };
  return c;
}

Codec RmspropCodec() {
  using torch::optim::RMSpropOptions;
  using torch::optim::RMSpropParamState;
  Codec c;
  c.group = [](const OptimizerOptions& base) {
    const auto& o = static_cast<const RMSpropOptions&>(base);
    Entries e = {{"lr", o.lr()},   {"momentum", o.momentum()}, {"alpha", o.alpha()},
                 {"eps", o.eps()}, {"centered", o.centered()}, {"weight_decay", o.weight_decay()}};
    CommonFlags(&e, false);
    return e;
  };
  c.state = [](const OptimizerParamState& base) {
    const auto& s = static_cast<const RMSpropParamState&>(base);
    Entries e = {{"step", StepTensor(s.step())}, {"square_avg", s.square_avg()}};
    if (s.momentum_buffer().defined()) e.emplace_back("momentum_buffer", s.momentum_buffer());
    if (s.grad_avg().defined()) e.emplace_back("grad_avg", s.grad_avg());
    return e;
  };
  c.load_group = [](const c10::impl::GenericDict& d, OptimizerOptions& base) -> absl::Status {
    auto& o = static_cast<RMSpropOptions&>(base);
    CKPT_ASSIGN_OR_RETURN(double lr, GetDouble(d, "lr"));
    CKPT_ASSIGN_OR_RETURN(double momentum, GetDouble(d, "momentum"));
    CKPT_ASSIGN_OR_RETURN(double alpha, GetDouble(d, "alpha"));
    CKPT_ASSIGN_OR_RETURN(double eps, GetDouble(d, "eps"));
    CKPT_ASSIGN_OR_RETURN(bool centered, GetBool(d, "centered"));
    CKPT_ASSIGN_OR_RETURN(double wd, GetDouble(d, "weight_decay"));
    o.lr(lr).momentum(momentum).alpha(alpha).eps(eps).centered(centered).weight_decay(wd);
    return absl::OkStatus();
  };
  c.load_state =
      [](const c10::impl::GenericDict& d) -> absl::StatusOr<std::unique_ptr<OptimizerParamState>> {
    auto s = std::make_unique<RMSpropParamState>();
    CKPT_ASSIGN_OR_RETURN(c10::IValue step, Get(d, "step"));
    CKPT_ASSIGN_OR_RETURN(int64_t n, StepOf(step));
    CKPT_ASSIGN_OR_RETURN(at::Tensor square_avg, GetTensor(d, "square_avg"));
    s->step(n);
    s->square_avg(square_avg);
    s->momentum_buffer(GetOptionalTensor(d, "momentum_buffer"));
    s->grad_avg(GetOptionalTensor(d, "grad_avg"));
    return std::unique_ptr<OptimizerParamState>(std::move(s));
  };
  return c;
}

absl::StatusOr<Codec> CodecFor(const Optimizer& optimizer) {
  if (dynamic_cast<const torch::optim::SGD*>(&optimizer)) return SgdCodec();
  if (dynamic_cast<const torch::optim::AdamW*>(&optimizer)) {
    return AdamLike<torch::optim::AdamWOptions, torch::optim::AdamWParamState>();
  }
  if (dynamic_cast<const torch::optim::Adam*>(&optimizer)) {
    return AdamLike<torch::optim::AdamOptions, torch::optim::AdamParamState>();
  }
  if (dynamic_cast<const torch::optim::Adagrad*>(&optimizer)) return AdagradCodec();
  if (dynamic_cast<const torch::optim::RMSprop*>(&optimizer)) return RmspropCodec();
  return absl::UnimplementedError(
      "optimizer state_dict supports SGD, Adam, AdamW, Adagrad and RMSprop");
}

}  // namespace

absl::StatusOr<c10::IValue> OptimizerStateDict(const Optimizer& optimizer) {
  CKPT_ASSIGN_OR_RETURN(Codec codec, CodecFor(optimizer));
  c10::impl::GenericDict state(c10::IntType::get(), c10::AnyType::get());
  c10::impl::GenericList groups(c10::AnyType::get());
  int64_t index = 0;
  for (const auto& group : optimizer.param_groups()) {
    Entries entries = codec.group(group.options());
    c10::List<int64_t> params;
    for (const at::Tensor& p : group.params()) {
      auto it = optimizer.state().find(StateKey(p));
      if (it != optimizer.state().end()) {
        state.insert(index, MakeDict(codec.state(*it->second)));
      }
      params.push_back(index++);
    }
    entries.emplace_back("params", params);
    groups.push_back(MakeDict(entries));
  }
  c10::impl::GenericDict out(c10::StringType::get(), c10::AnyType::get());
  out.insert("state", state);
  out.insert("param_groups", groups);
  return c10::IValue(out);
}

absl::Status LoadOptimizerStateDict(Optimizer& optimizer, const c10::IValue& value) {
  CKPT_ASSIGN_OR_RETURN(Codec codec, CodecFor(optimizer));
  if (!value.isGenericDict()) return absl::InvalidArgumentError("optimizer state is not a dict");
  const c10::impl::GenericDict dict = value.toGenericDict();
  CKPT_ASSIGN_OR_RETURN(c10::IValue state_v, Get(dict, "state"));
  CKPT_ASSIGN_OR_RETURN(c10::IValue groups_v, Get(dict, "param_groups"));
  if (!state_v.isGenericDict() || !groups_v.isList()) {
    return absl::InvalidArgumentError(
        "optimizer state: 'state' must be a dict and "
        "'param_groups' a list");
  }
  auto& groups = optimizer.param_groups();
  const auto saved_groups = groups_v.toListRef();
  if (saved_groups.size() != groups.size()) {
    return absl::InvalidArgumentError(absl::StrCat("loaded state has ", saved_groups.size(),
                                                   " parameter groups, the optimizer ",
                                                   groups.size()));
  }
  // Validate everything before changing anything.
  std::vector<std::pair<StateKeyType, std::unique_ptr<OptimizerParamState>>> new_state;
  const c10::impl::GenericDict saved_state = state_v.toGenericDict();
  int64_t index = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (!saved_groups[g].isGenericDict()) {
      return absl::InvalidArgumentError("a parameter group is not a dict");
    }
    CKPT_ASSIGN_OR_RETURN(c10::IValue params, Get(saved_groups[g].toGenericDict(), "params"));
    if (!params.isList() || params.toListRef().size() != groups[g].params().size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter group ", g, " has ", groups[g].params().size(),
                       " parameters, the loaded state a different number"));
    }
    for (const at::Tensor& p : groups[g].params()) {
      auto it = saved_state.find(index);
      ++index;
      if (it == saved_state.end()) continue;
      if (!it->value().isGenericDict()) {
        return absl::InvalidArgumentError(
            absl::StrCat("state of parameter ", index - 1, " is not a dict"));
      }
      auto s = codec.load_state(it->value().toGenericDict());
      if (!s.ok()) return Annotate(s.status(), absl::StrCat("state of parameter ", index - 1));
      // Per-parameter buffers must have the parameter's shape.
      for (const auto& [name, v] : codec.state(**s)) {
        if (name == "step" || !v.isTensor()) continue;
        if (v.toTensor().sizes() != p.sizes()) {
          return absl::InvalidArgumentError(
              absl::StrCat("state '", name, "' of parameter ", index - 1, " has shape ",
                           Shape(v.toTensor().sizes()), ", the parameter ", Shape(p.sizes())));
        }
      }
      new_state.emplace_back(StateKey(p), *std::move(s));
    }
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    CKPT_RETURN_IF_ERROR(codec.load_group(saved_groups[g].toGenericDict(), groups[g].options()));
  }
  auto& state = optimizer.state();
  for (auto& [key, s] : new_state) state[key] = std::move(s);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- checkpoints

absl::StatusOr<SaveResult> SaveTrainingCheckpoint(Client& client, const std::string& name,
                                                  const TrainingCheckpoint& checkpoint,
                                                  SaveOptions options) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("epoch", checkpoint.epoch);
  dict.insert("loss", checkpoint.loss);
  for (const auto& [key, module] : checkpoint.models) dict.insert(key, StateDict(*module));
  for (const auto& [key, optimizer] : checkpoint.optimizers) {
    CKPT_ASSIGN_OR_RETURN(c10::IValue state, OptimizerStateDict(*optimizer));
    dict.insert(key, state);
  }
  for (const auto& [key, value] : checkpoint.extras) dict.insert(key, value);
  if (options.epoch == 0) options.epoch = checkpoint.epoch;
  return client.Save(name, c10::IValue(dict), options);
}

absl::Status LoadTrainingCheckpoint(Client& client, const std::string& name,
                                    TrainingCheckpoint& checkpoint, bool strict,
                                    const TorchLoadOptions& options) {
  // Resolve the version once, so that models, optimizers and extras all come
  // from the same one even if `latest` moves meanwhile.
  CKPT_ASSIGN_OR_RETURN(LoadedValue manifest,
                        client.raw().GetManifest(name, options.version, options.tag));
  TorchLoadOptions pinned = options;
  pinned.version = manifest.version.version;
  pinned.tag.clear();
  // Models straight into their tensors; the rest (small) as values.
  std::set<std::string> models;
  for (const auto& [key, module] : checkpoint.models) {
    models.insert(key);
    auto result = client.LoadInto(name, *module, key, strict, pinned);
    if (!result.ok()) return Annotate(result.status(), absl::StrCat("'", key, "'"));
  }
  // Every other top-level key.
  TorchLoadOptions rest = pinned;
  rest.patterns.clear();
  const std::vector<std::string> keys = FlattenedKeys(manifest.tree);
  for (size_t i = 1; i < keys.size(); ++i) {
    if (keys[i].find('/') == std::string::npos && !models.count(keys[i])) {
      rest.patterns.push_back(EscapeGlob(keys[i]));
    }
  }
  c10::IValue others(c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get()));
  if (!rest.patterns.empty()) {
    CKPT_ASSIGN_OR_RETURN(others, client.Load(name, rest));
  }
  if (!others.isGenericDict()) {
    return absl::InvalidArgumentError("training checkpoint root is not a dict");
  }
  const c10::impl::GenericDict dict = others.toGenericDict();
  for (const auto& [key, optimizer] : checkpoint.optimizers) {
    auto it = dict.find(key);
    if (it == dict.end()) {
      return absl::NotFoundError(absl::StrCat("checkpoint has no '", key, "'"));
    }
    absl::Status s = LoadOptimizerStateDict(*optimizer, it->value());
    if (!s.ok()) return Annotate(s, absl::StrCat("'", key, "'"));
  }
  checkpoint.extras.clear();
  for (const auto& entry : dict) {
    const std::string& key = entry.key().toStringRef();
    if (key == "epoch" && entry.value().isInt()) {
      checkpoint.epoch = entry.value().toInt();
    } else if (key == "loss" && (entry.value().isDouble() || entry.value().isInt())) {
      checkpoint.loss = entry.value().isDouble() ? entry.value().toDouble()
                                                 : static_cast<double>(entry.value().toInt());
    } else if (std::none_of(checkpoint.optimizers.begin(), checkpoint.optimizers.end(),
                            [&](const auto& o) { return o.first == key; })) {
      checkpoint.extras.emplace_back(key, entry.value());
    }
  }
  return absl::OkStatus();
}

}  // namespace ckpt::client
