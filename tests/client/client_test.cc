// The LibTorch client library against an in-process ckpt server: every value
// of SPEC §1, state_dicts, optimizers, devices, partial and in-place restores,
// async and multi-rank saves.

#include "client/client.h"

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::client {
namespace {

// Structural equality of two value trees: same kinds, dict key order,
// scalar values and types, tensor dtype, shape, device and values.
void ExpectSameValue(const c10::IValue& a, const c10::IValue& b, const std::string& path = "") {
  SCOPED_TRACE(path);
  ASSERT_EQ(a.tagKind(), b.tagKind());
  if (a.isTensor()) {
    const at::Tensor& x = a.toTensor();
    const at::Tensor& y = b.toTensor();
    EXPECT_EQ(x.scalar_type(), y.scalar_type());
    EXPECT_EQ(x.sizes(), y.sizes());
    EXPECT_EQ(x.device(), y.device());
    EXPECT_TRUE(x.cpu().equal(y.cpu()));
  } else if (a.isGenericDict()) {
    auto da = a.toGenericDict();
    auto db = b.toGenericDict();
    ASSERT_EQ(da.size(), db.size());
    auto ia = da.begin();
    auto ib = db.begin();
    for (; ia != da.end(); ++ia, ++ib) {
      ASSERT_EQ(ia->key(), ib->key());
      ExpectSameValue(ia->value(), ib->value(), path + "/" + c10::str(ia->key()));
    }
  } else if (a.isList()) {
    auto la = a.toListRef();
    auto lb = b.toListRef();
    ASSERT_EQ(la.size(), lb.size());
    for (size_t i = 0; i < la.size(); ++i)
      ExpectSameValue(la[i], lb[i], path + "/" + std::to_string(i));
  } else if (a.isTuple()) {
    auto ta = a.toTupleRef().elements();
    auto tb = b.toTupleRef().elements();
    ASSERT_EQ(ta.size(), tb.size());
    for (size_t i = 0; i < ta.size(); ++i)
      ExpectSameValue(ta[i], tb[i], path + "/" + std::to_string(i));
  } else if (IsBytes(a)) {
    EXPECT_EQ(*GetBytes(a), *GetBytes(b));
  } else if (a.isDouble()) {
    EXPECT_EQ(a.toDouble(), b.toDouble());
  } else {
    EXPECT_EQ(a, b);
  }
}

struct Net : torch::nn::Module {
  Net() {
    hidden = register_module("hidden", torch::nn::Linear(3, 2));
    bn = register_module("bn", torch::nn::BatchNorm1d(2));
    output = register_module("output", torch::nn::Linear(2, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return output(torch::relu(bn(hidden(x)))); }
  torch::nn::Linear hidden{nullptr}, output{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = testing::TestServerOptions(dir_.path());
    options.chunk_size = 1 << 20;
    auto server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    target_ = testing::AddressOf(*server_);
    auto client = Client::Connect(target_, {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    torch::manual_seed(0);
  }

  c10::IValue RoundTrip(const c10::IValue& value, const std::string& name = "t/value") {
    auto saved = client_->Save(name, value, {});
    EXPECT_TRUE(saved.ok()) << saved.status();
    auto loaded = client_->Load(name, {});
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? *loaded : c10::IValue();
  }

  uint64_t StoredBytes() { return client_->raw().GetServerInfo()->stats.stored_bytes; }

  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::string target_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientTest, TensorListDictRoundTrip) {
  at::Tensor x = torch::randn({2, 3});
  at::Tensor y = torch::arange(10, torch::kLong);
  ExpectSameValue(RoundTrip(x), x);
  c10::List<at::Tensor> list({x, y});
  ExpectSameValue(RoundTrip(list), list);
  c10::Dict<std::string, at::Tensor> dict;
  dict.insert("x", x);
  dict.insert("y", y);
  c10::IValue back = RoundTrip(dict);
  ExpectSameValue(back, dict);
  // A dict of tensors comes back as a typed Dict<string, Tensor>.
  auto typed = c10::impl::toTypedDict<std::string, at::Tensor>(back.toGenericDict());
  EXPECT_TRUE(typed.at("y").equal(y));
}

TEST_F(ClientTest, NestedValuesScalarsAndKeyOrder) {
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("zeta", 1);  // insertion order, not sorted
  root.insert("alpha", 0.25);
  root.insert("flag", true);
  root.insert("name", std::string("run-42"));
  root.insert("nothing", c10::IValue());
  root.insert("tuple", c10::ivalue::Tuple::create(
                           {c10::IValue(1), c10::IValue(2.5), c10::IValue(std::string("s"))}));
  c10::impl::GenericDict by_int(c10::IntType::get(), c10::AnyType::get());
  by_int.insert(int64_t{3}, torch::ones({2}));
  by_int.insert(int64_t{0}, torch::zeros({2}));
  root.insert("int_keys", by_int);
  c10::impl::GenericList mixed(c10::AnyType::get());
  mixed.push_back(c10::IValue(1));
  mixed.push_back(torch::ones({1}));
  mixed.push_back(c10::IValue());
  root.insert("mixed", mixed);
  root.insert("bytes", Bytes(std::string("\x00\x01binary\xff", 9)));
  c10::IValue back = RoundTrip(root);
  ExpectSameValue(back, root);
  std::vector<std::string> keys;
  for (const auto& e : back.toGenericDict()) keys.push_back(e.key().toStringRef());
  EXPECT_EQ(keys, (std::vector<std::string>{"zeta", "alpha", "flag", "name", "nothing", "tuple",
                                            "int_keys", "mixed", "bytes"}));
  EXPECT_TRUE(back.toGenericDict().at("zeta").isInt());
  EXPECT_TRUE(back.toGenericDict().at("alpha").isDouble());
}

TEST_F(ClientTest, EveryDtypeZeroDimEmptyNonContiguous) {
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  for (auto dtype : {torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16,
                     torch::kInt8, torch::kInt16, torch::kInt32, torch::kInt64, torch::kUInt8,
                     torch::kBool, torch::kComplexFloat, torch::kComplexDouble}) {
    at::Tensor t = torch::randn({4, 3}, torch::kDouble).mul(50).to(dtype);
    root.insert(c10::toString(dtype), t);
  }
  root.insert("zero_dim", torch::tensor(3.5));
  root.insert("empty", torch::empty({0, 7}));
  at::Tensor base = torch::arange(12, torch::kFloat).reshape({3, 4});
  at::Tensor transposed = base.t();
  ASSERT_FALSE(transposed.is_contiguous());
  root.insert("transposed", transposed);
  root.insert("strided", base.slice(1, 0, 4, 2));
  c10::IValue back = RoundTrip(root);
  ExpectSameValue(back, root);
  EXPECT_TRUE(back.toGenericDict().at("transposed").toTensor().is_contiguous());
  EXPECT_EQ(back.toGenericDict().at("zero_dim").toTensor().dim(), 0);
}

// Conjugate and negative views keep their values unresolved in memory: a
// save stores the values they stand for, read in place or through a copy.
TEST_F(ClientTest, ConjugateAndNegativeViewsAreSavedWithTheValuesTheyShow) {
  const at::Tensor z = torch::complex(torch::randn({3}), torch::randn({3}));
  const at::Tensor x = torch::randn({4});
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("conj", z.conj());                    // contiguous, conjugate bit
  root.insert("neg", at::_neg_view(x));             // contiguous, negative bit
  root.insert("conj_imag", torch::imag(z.conj()));  // strided, negative bit
  ASSERT_TRUE(z.conj().is_conj() && z.conj().is_contiguous());
  ASSERT_TRUE(at::_neg_view(x).is_neg() && at::_neg_view(x).is_contiguous());
  ASSERT_TRUE(torch::imag(z.conj()).is_neg());
  for (bool async : {false, true}) {
    SCOPED_TRACE(async);
    const std::string name = async ? "t/views-async" : "t/views";
    auto saved = async ? client_->SaveAsync(name, root, {}).get() : client_->Save(name, root, {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    auto loaded = client_->Load(name, {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto dict = loaded->toGenericDict();
    const at::Tensor conj = dict.at("conj").toTensor();
    const at::Tensor neg = dict.at("neg").toTensor();
    const at::Tensor conj_imag = dict.at("conj_imag").toTensor();
    EXPECT_FALSE(conj.is_conj() || neg.is_neg() || conj_imag.is_neg());
    EXPECT_TRUE(torch::equal(torch::real(conj), torch::real(z)));
    EXPECT_TRUE(torch::equal(torch::imag(conj), -torch::imag(z)));
    EXPECT_TRUE(torch::equal(neg, -x));
    EXPECT_TRUE(torch::equal(conj_imag, -torch::imag(z)));
  }
}

TEST_F(ClientTest, UnsavableValuesAreRefusedNamingTheirKeyPath) {
  // A sparse tensor deep inside: its path, dict keys and list indices.
  c10::impl::GenericList layers(c10::AnyType::get());
  layers.push_back(torch::ones({2}));
  layers.push_back(torch::ones({2, 2}).to_sparse());
  c10::impl::GenericDict model(c10::StringType::get(), c10::AnyType::get());
  model.insert("layers", layers);
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("model", model);
  for (bool async : {false, true}) {
    absl::Status status = async ? client_->SaveAsync("t/bad", root, {}).get().status()
                                : client_->Save("t/bad", root, {}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find("tensor 'model/layers/1': only dense strided tensors can "
                                    "be saved"),
              std::string::npos)
        << status;
  }
  // A dict key that is neither str nor int.
  c10::impl::GenericDict odd(c10::FloatType::get(), c10::AnyType::get());
  odd.insert(1.5, torch::ones({1}));
  c10::impl::GenericDict outer(c10::StringType::get(), c10::AnyType::get());
  outer.insert("opt", odd);
  absl::Status status = client_->Save("t/bad", outer, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("dict 'opt' has a key of type Double"), std::string::npos)
      << status;
  EXPECT_EQ(client_->raw().ListVersions("t/bad").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, SharedStorageIsStoredOnce) {
  at::Tensor w = torch::randn({256, 256});  // 256 KiB
  c10::Dict<std::string, at::Tensor> tied;
  tied.insert("embed.weight", w);
  tied.insert("lm_head.weight", w);  // tied weights: same storage
  const uint64_t before = StoredBytes();
  auto saved = client_->Save("t/tied", tied, {});
  ASSERT_TRUE(saved.ok());
  EXPECT_EQ(saved->bytes_sent, 256u * 256 * 4);
  EXPECT_EQ(StoredBytes() - before, 256u * 256 * 4);
  c10::IValue back = client_->Load("t/tied", {}).value();
  ExpectSameValue(back, tied);
}

TEST_F(ClientTest, LargeTensorAndTenThousandTensors) {
  at::Tensor big = torch::randn({17, 1024, 1024});  // 68 MiB
  ExpectSameValue(RoundTrip(big, "t/big"), big);
  c10::Dict<std::string, at::Tensor> many;
  for (int i = 0; i < 10000; ++i) many.insert(absl::StrCat("layer", i, ".w"), torch::full({3}, i));
  c10::IValue back = RoundTrip(many, "t/many");
  ASSERT_EQ(back.toGenericDict().size(), 10000u);
  ExpectSameValue(back, many);
}

TEST_F(ClientTest, ModuleStateDictOrderAndInPlaceLoad) {
  auto net = std::make_shared<Net>();
  net->train();
  net->forward(torch::randn({4, 3}));  // moves BatchNorm's running stats
  auto sd = StateDict(*net);
  std::vector<std::string> keys;
  for (const auto& e : sd) keys.push_back(e.key());
  // PyTorch's order: each module's parameters, then buffers, then children.
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "hidden.weight", "hidden.bias", "bn.weight", "bn.bias", "bn.running_mean",
                      "bn.running_var", "bn.num_batches_tracked", "output.weight", "output.bias"}));
  EXPECT_EQ(sd.at("bn.num_batches_tracked").scalar_type(), torch::kLong);
  ASSERT_TRUE(client_->Save("m/net", sd, {}).ok());

  auto fresh = std::make_shared<Net>();
  const void* weight_memory = fresh->hidden->weight.data_ptr();
  auto result = client_->LoadInto("m/net", *fresh, "", /*strict=*/true, {});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->missing_keys.empty());
  EXPECT_TRUE(result->unexpected_keys.empty());
  // Same memory, new values: loaded in place.
  EXPECT_EQ(fresh->hidden->weight.data_ptr(), weight_memory);
  auto fresh_sd = StateDict(*fresh);
  for (const auto& e : sd) EXPECT_TRUE(fresh_sd.at(e.key()).equal(e.value())) << e.key();
  EXPECT_TRUE(fresh->hidden->weight.requires_grad());
}

// Lineage: a job that resumed from a version (Load or LoadInto) records it
// as the parent of what it saves next; SaveOptions::parent overrides.
TEST_F(ClientTest, SavesAfterALoadRecordItAsTheirParent) {
  EXPECT_EQ(client_->last_loaded(), "");
  auto first = client_->Save("lineage/run-1", torch::ones({3}), {});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->version.parent, "");
  ASSERT_TRUE(client_->Load("lineage/run-1", {}).ok());
  EXPECT_EQ(client_->last_loaded(), "lineage/run-1@1");
  auto resumed = client_->Save("lineage/run-2", torch::ones({3}), {});
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->version.parent, "lineage/run-1@1");
  auto net = std::make_shared<Net>();
  ASSERT_TRUE(client_->Save("lineage/net", StateDict(*net), {}).ok());
  ASSERT_TRUE(client_->LoadInto("lineage/net", *net, "", true, {}).ok());
  SaveOptions warm_start;
  warm_start.parent = "lineage/run-2@1";
  auto explicit_parent = client_->SaveAsync("lineage/run-3", torch::ones({3}), warm_start).get();
  ASSERT_TRUE(explicit_parent.ok()) << explicit_parent.status();
  EXPECT_EQ(explicit_parent->version.parent, "lineage/run-2@1");
  auto from_net = client_->SaveAsync("lineage/run-4", torch::ones({3}), {}).get();
  ASSERT_TRUE(from_net.ok());
  EXPECT_EQ(from_net->version.parent, "lineage/net@1");
  auto versions = client_->raw().ListVersions("lineage/run-2");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ((*versions)[0].parent, "lineage/run-1@1");
}

TEST_F(ClientTest, StrictMismatchListsKeysAndShapeMismatchNamesKey) {
  auto net = std::make_shared<Net>();
  c10::Dict<std::string, at::Tensor> sd = StateDict(*net);
  sd.erase("output.bias");
  sd.insert("extra.weight", torch::ones({1}));
  ASSERT_TRUE(client_->Save("m/partial", sd, {}).ok());

  auto fresh = std::make_shared<Net>();
  auto strict = client_->LoadInto("m/partial", *fresh, "", true, {});
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(strict.status().message(),
            "Error(s) in loading state_dict: Missing key(s): [output.bias]. "
            "Unexpected key(s): [extra.weight]");
  auto loose = client_->LoadInto("m/partial", *fresh, "", false, {});
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_EQ(loose->missing_keys, std::vector<std::string>{"output.bias"});
  EXPECT_EQ(loose->unexpected_keys, std::vector<std::string>{"extra.weight"});
  EXPECT_TRUE(fresh->hidden->weight.equal(net->hidden->weight));

  // The same through the value API.
  auto direct = LoadStateDict(*fresh, sd, true);
  EXPECT_EQ(direct.status().code(), absl::StatusCode::kFailedPrecondition);

  c10::Dict<std::string, at::Tensor> wrong = StateDict(*net);
  wrong.insert_or_assign("hidden.weight", torch::ones({3, 2}));
  ASSERT_TRUE(client_->Save("m/wrong", wrong, {}).ok());
  auto mismatch = client_->LoadInto("m/wrong", *fresh, "", false, {});
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.status().message().find("mismatch for hidden.weight"), std::string::npos)
      << mismatch.status();
}

TEST_F(ClientTest, DataParallelPrefixAndRenameMap) {
  auto net = std::make_shared<Net>();
  c10::Dict<std::string, at::Tensor> prefixed;
  for (const auto& e : StateDict(*net)) prefixed.insert("module." + e.key(), e.value());
  ASSERT_TRUE(client_->Save("m/dp", prefixed, {}).ok());
  auto fresh = std::make_shared<Net>();
  TorchLoadOptions options;
  options.rename.strip_prefix = "module.";
  auto result = client_->LoadInto("m/dp", *fresh, "", true, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(fresh->output->weight.equal(net->output->weight));

  // Value API: renamed keys in the returned dict; an explicit map on top.
  options.rename.map = {{"hidden.bias", "hidden.renamed_bias"}};
  c10::IValue back = client_->Load("m/dp", options).value();
  EXPECT_TRUE(back.toGenericDict().contains("hidden.weight"));
  EXPECT_TRUE(back.toGenericDict().contains("hidden.renamed_bias"));
  EXPECT_FALSE(back.toGenericDict().contains("module.hidden.weight"));
}

TEST_F(ClientTest, PatternsSendOnlySelectedBytes) {
  c10::impl::GenericDict ckpt(c10::StringType::get(), c10::AnyType::get());
  c10::Dict<std::string, at::Tensor> model;
  model.insert("hidden.weight", torch::randn({1000}));
  model.insert("hidden.bias", torch::randn({10}));
  model.insert("output.weight", torch::randn({100000}));
  ckpt.insert("model_state_dict", model);
  ckpt.insert("epoch", 3);
  ASSERT_TRUE(client_->Save("p/ckpt", ckpt, {}).ok());

  // Count what crosses the wire with a raw streaming load of the same selection.
  struct Count : LoadSink {
    uint64_t bytes = 0;
    absl::Status OnTree(const VersionInfo&, const Tree&) override { return absl::OkStatus(); }
    absl::Status OnData(size_t, uint64_t, absl::string_view b) override {
      bytes += b.size();
      return absl::OkStatus();
    }
  } count;
  LoadOptions raw;
  raw.patterns = {"model_state_dict/hidden.*"};
  ASSERT_TRUE(client_->raw().Load("p/ckpt", raw, &count).ok());
  EXPECT_EQ(count.bytes, (1000u + 10u) * 4);

  TorchLoadOptions options;
  options.patterns = {"model_state_dict/hidden.*"};
  c10::IValue back = client_->Load("p/ckpt", options).value();
  auto sd = back.toGenericDict().at("model_state_dict").toGenericDict();
  EXPECT_EQ(sd.size(), 2u);
  EXPECT_TRUE(sd.at("hidden.weight").toTensor().equal(model.at("hidden.weight")));
  EXPECT_FALSE(back.toGenericDict().contains("epoch"));
}

TEST_F(ClientTest, MapLocationAndMissingDevice) {
  // A checkpoint saved on a GPU machine (device recorded as cuda:1), written
  // through the raw protocol since this machine has no GPU.
  std::vector<float> values = {1, 2, 3, 4};
  SaveInput input;
  Node root;
  root.kind = NodeKind::kDict;
  root.size = 1;
  Node w;
  w.kind = NodeKind::kTensor;
  w.key = std::string("w");
  w.tensor.dtype = DType::kFloat32;
  w.tensor.shape = {4};
  w.tensor.device = "cuda:1";
  w.data.size = 16;
  input.tree = {root, w};
  input.bytes = {{}, {reinterpret_cast<const uint8_t*>(values.data()), 16}};
  ASSERT_TRUE(client_->raw().Save("gpu/ckpt", input, {}).ok());

  auto plain = client_->Load("gpu/ckpt", {});
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(plain.status().message().find("saved on cuda:1"), std::string::npos);
  EXPECT_NE(plain.status().message().find("map_location"), std::string::npos);

  const at::Tensor want = torch::tensor({1.f, 2.f, 3.f, 4.f});
  TorchLoadOptions to_cpu;
  to_cpu.map_location = MapLocation::To("cpu");
  EXPECT_TRUE(client_->Load("gpu/ckpt", to_cpu)->toGenericDict().at("w").toTensor().equal(want));
  TorchLoadOptions mapping;
  mapping.map_location.mapping = {{"cuda:1", "cpu"}};
  EXPECT_TRUE(client_->Load("gpu/ckpt", mapping)->toGenericDict().at("w").toTensor().equal(want));
  TorchLoadOptions function;
  std::string seen;
  function.map_location.function = [&](const std::string& saved) {
    seen = saved;
    return std::string("cpu");
  };
  EXPECT_TRUE(client_->Load("gpu/ckpt", function)->toGenericDict().at("w").toTensor().equal(want));
  EXPECT_EQ(seen, "cuda:1");
  // The original device is recorded on save too.
  EXPECT_EQ(client_->raw().GetManifest("gpu/ckpt", 0, "")->tree[1].tensor.device, "cuda:1");
}

TEST_F(ClientTest, AsyncSaveKeepsThePreChangeValues) {
  auto net = std::make_shared<Net>();
  auto before = StateDict(*net);
  std::map<std::string, at::Tensor> copies;
  for (const auto& e : before) copies[e.key()] = e.value().clone();
  auto future = client_->SaveAsync("a/net", before, {});
  // Change the model right after the snapshot.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters()) p.add_(1.0);
  }
  auto result = future.get();
  ASSERT_TRUE(result.ok()) << result.status();
  c10::IValue back = client_->Load("a/net", {}).value();
  for (const auto& [key, value] : copies) {
    EXPECT_TRUE(back.toGenericDict().at(key).toTensor().equal(value)) << key;
  }
  EXPECT_FALSE(net->hidden->weight.equal(copies["hidden.weight"]));
}

TEST_F(ClientTest, MultiRankSaveAndPerRankRestore) {
  std::vector<absl::StatusOr<SaveResult>> results(2);
  std::vector<at::Tensor> shards = {torch::randn({64}), torch::randn({64})};
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      c10::Dict<std::string, at::Tensor> part;
      part.insert(absl::StrCat("rank", r, ".shard"), shards[r]);
      SaveOptions options;
      options.rank = r;
      options.world_size = 2;
      options.save_id = "step-10";
      results[r] = client_->Save("dist/model", part, options);
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(results[r].ok()) << results[r].status();
    EXPECT_EQ(results[r]->version.version, 1u);
  }
  for (int r = 0; r < 2; ++r) {
    TorchLoadOptions mine;
    mine.patterns = {absl::StrCat("rank", r, ".*")};
    c10::IValue back = client_->Load("dist/model", mine).value();
    ASSERT_EQ(back.toGenericDict().size(), 1u);
    EXPECT_TRUE(
        back.toGenericDict().at(absl::StrCat("rank", r, ".shard")).toTensor().equal(shards[r]));
  }
}

TEST_F(ClientTest, TorchScriptModuleTravelsAsBytes) {
  torch::jit::Module scripted("Scale");
  scripted.register_parameter("w", torch::full({3}, 2.0), false);
  scripted.define(R"(
    def forward(self, x):
        return x * self.w
  )");
  std::ostringstream archive;
  scripted.save(archive);
  c10::impl::GenericDict ckpt(c10::StringType::get(), c10::AnyType::get());
  ckpt.insert("model", Bytes(archive.str()));
  ckpt.insert("model_state_dict", c10::Dict<std::string, at::Tensor>());
  ASSERT_TRUE(client_->Save("ts/model", ckpt, {}).ok());
  c10::IValue back = client_->Load("ts/model", {}).value();
  auto bytes = GetBytes(back.toGenericDict().at("model"));
  ASSERT_TRUE(bytes.ok());
  std::istringstream in(*bytes);
  torch::jit::Module restored = torch::jit::load(in);
  at::Tensor y = restored.forward({torch::ones({3})}).toTensor();
  EXPECT_TRUE(y.equal(torch::full({3}, 2.0)));
}

TEST(ClientConnectTest, ServerDownIsUnavailableWithinTheDeadline) {
  ClientOptions options;
  options.connect_timeout = absl::Seconds(1);
  const auto start = std::chrono::steady_clock::now();
  auto client = Client::Connect("127.0.0.1:1", options);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(secs, 3.0);
}

}  // namespace
}  // namespace ckpt::client
