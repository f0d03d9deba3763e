// End to end, as users run it: Python (PyTorch 1.13 from Debian, 2.x from
// PyPI, the reference safetensors package) writes checkpoints, `ckpt import`
// stores them in the real ckpt-server, `ckpt export` writes them back, and
// Python loads and compares them. Also the reverse direction from C++ saves,
// malformed files through the CLI, and bounded memory on a large file.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "client/raw_client.h"
#include "interop/checkpoint.h"
#include "interop/file_io.h"
#include "tests/interop/test_util.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::interop {
namespace {

using ::ckpt::testing::CommandResult;
using ::ckpt::testing::RunCommand;
using testing::Builder;
using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

struct Python {
  const char* name;
  const char* exe;
  bool torch2;  // PyTorch 2.x with the safetensors package
};

const Python kTorch1{"Torch113", "/usr/bin/python3", false};
const Python kTorch2{"Torch2", CKPT_PYTHON3, true};

bool WriteFileTo(const Builder& b, const std::string& path) {
  auto file = testing::WriteFile(Format::kPt, b);
  if (!file.ok()) return false;
  std::ofstream(path, std::ios::binary) << *file;
  return true;
}

std::string Script(const std::string& name) {
  return std::string(CKPT_INTEROP_SCRIPT_DIR) + "/" + name;
}

class InteropE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = ckpt::testing::ServerProcess::Start(dir_.path() + "/db");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  CommandResult Ckpt(std::vector<std::string> args) {
    args.insert(args.begin(), {ckpt::testing::CliBinary(), "--server", server_->address()});
    return RunCommand(args);
  }
  // Runs a script under `python`; fails the test with its output if it fails.
  std::string Py(const Python& python, std::vector<std::string> args) {
    args.insert(args.begin(), python.exe);
    CommandResult r = RunCommand(args);
    EXPECT_EQ(r.exit_code, 0) << python.name << " " << args[1] << "\n" << r.out << r.err;
    return r.out;
  }
  std::string Path(const std::string& name) { return dir_.path() + "/" + name; }

  // Makes Python's cases, imports and exports each; returns (orig, exported)
  // pairs.
  std::vector<std::string> RoundTripCases(const Python& python, const std::string& sub) {
    const std::string in = Path(sub + "-in"), out = Path(sub + "-out");
    mkdir(in.c_str(), 0755);
    mkdir(out.c_str(), 0755);
    Py(python, {Script("torch_cases.py"), "make", in});
    const std::string list = testing::ReadWholeFile(in + "/cases.txt");
    std::vector<std::string> pairs;
    for (absl::string_view c : absl::StrSplit(list, '\n', absl::SkipEmpty())) {
      const std::string name(c);
      const std::string ref = "interop/" + sub + "/" + name;
      CommandResult imp = Ckpt({"import", in + "/" + name + ".pt", ref});
      EXPECT_EQ(imp.exit_code, 0) << name << ": " << imp.err;
      EXPECT_THAT(imp.out, HasSubstr("imported " + in + "/" + name + ".pt as " + ref + "@1 (pt, "));
      CommandResult exp = Ckpt({"export", ref, out + "/" + name + ".pt"});
      EXPECT_EQ(exp.exit_code, 0) << name << ": " << exp.err;
      EXPECT_THAT(exp.out, HasSubstr("exported " + ref + "@1 to " + out + "/" + name + ".pt"));
      pairs.push_back(in + "/" + name + ".pt");
      pairs.push_back(out + "/" + name + ".pt");
    }
    EXPECT_EQ(pairs.size(), 2 * 13u);
    return pairs;
  }

  ckpt::testing::TempDir dir_;
  std::unique_ptr<ckpt::testing::ServerProcess> server_;
};

// Python's torch.save -> ckpt import -> ckpt export -> torch.load equal, in
// each PyTorch version; files of 1.13 also load in 2.x.
TEST_F(InteropE2E, Torch113CheckpointsRoundTrip) {
  std::vector<std::string> args = RoundTripCases(kTorch1, "t1");
  args.insert(args.begin(), {Script("torch_cases.py"), "compare"});
  const std::string out = Py(kTorch1, args);
  EXPECT_THAT(out, HasSubstr("torch 1.13"));
  EXPECT_THAT(out, HasSubstr("13 files equal"));
  const std::string cross = Py(kTorch2, args);
  EXPECT_THAT(cross, HasSubstr("torch 2."));
  EXPECT_THAT(cross, HasSubstr("13 files equal"));
}

TEST_F(InteropE2E, Torch2CheckpointsRoundTrip) {
  std::vector<std::string> args = RoundTripCases(kTorch2, "t2");
  args.insert(args.begin(), {Script("torch_cases.py"), "compare"});
  const std::string out = Py(kTorch2, args);
  EXPECT_THAT(out, HasSubstr("torch 2."));
  EXPECT_THAT(out, HasSubstr("13 files equal"));
  EXPECT_THAT(out, HasSubstr("also with weights_only=True"));
}

// ---- C++ saves -> export -> Python

Json Describe(const Builder& b, size_t* i, bool safetensors_flat) {
  const Node& n = b.tree()[*i];
  const std::string& data = b.data()[*i];
  ++*i;
  Json j;
  switch (n.kind) {
    case NodeKind::kDict: {
      j["type"] = "dict";
      j["items"] = Json::array();
      for (uint32_t c = 0; c < n.size; ++c) {
        const Node& child = b.tree()[*i];
        Json key = std::holds_alternative<int64_t>(child.key)
                       ? Json(std::get<int64_t>(child.key))
                       : Json(std::get<std::string>(child.key));
        j["items"].push_back(Json::array({key, Describe(b, i, safetensors_flat)}));
      }
      break;
    }
    case NodeKind::kList:
    case NodeKind::kTuple:
      j["type"] = n.kind == NodeKind::kList ? "list" : "tuple";
      j["items"] = Json::array();
      for (uint32_t c = 0; c < n.size; ++c) j["items"].push_back(Describe(b, i, safetensors_flat));
      break;
    case NodeKind::kNone:
      j["type"] = "none";
      break;
    case NodeKind::kBool:
      j = {{"type", "bool"}, {"value", n.bool_value}};
      break;
    case NodeKind::kInt:
      j = {{"type", "int"}, {"value", n.int_value}};
      break;
    case NodeKind::kFloat:
      j = {{"type", "float"}, {"value", n.float_value}};
      break;
    case NodeKind::kString:
      j = {{"type", "str"}, {"value", n.string_value}};
      break;
    case NodeKind::kBytes:
      j = {{"type", "bytes"}, {"hex", absl::BytesToHexString(data)}};
      break;
    case NodeKind::kTensor:
      j = {{"type", "tensor"},
           {"dtype", std::string(DTypeName(n.tensor.dtype))},
           {"shape", n.tensor.shape},
           {"device", n.tensor.device},
           {"requires_grad", n.tensor.requires_grad},
           {"hex", absl::BytesToHexString(data)}};
      break;
  }
  return j;
}

void WriteJson(const std::string& path, const Json& j) { std::ofstream(path) << j.dump(1); }

void Save(const std::string& address, const std::string& name, const Builder& b) {
  auto client = client::RawClient::Connect(address, {});
  ASSERT_TRUE(client.ok()) << client.status();
  client::SaveInput input;
  input.tree = b.tree();
  for (const std::string& d : b.data()) {
    input.bytes.push_back({reinterpret_cast<const uint8_t*>(d.data()), d.size()});
  }
  auto saved = (*client)->Save(name, input, {});
  ASSERT_TRUE(saved.ok()) << saved.status();
}

// A training checkpoint as a C++ program saves it: PyTorch's key names,
// optimizer state with int keys, every dtype, a GPU tensor, a parameter.
Builder CppCheckpoint(bool unsigned_dtypes) {
  Builder b;
  const DType dtypes[] = {DType::kFloat32, DType::kFloat64, DType::kFloat16,   DType::kBFloat16,
                          DType::kInt8,    DType::kInt16,   DType::kInt32,     DType::kInt64,
                          DType::kUInt8,   DType::kBool,    DType::kComplex64, DType::kComplex128,
                          DType::kUInt16,  DType::kUInt32,  DType::kUInt64};
  const uint32_t n_dtypes = unsigned_dtypes ? 15 : 12;
  b.Dict(7)
      .Int(5, std::string("epoch"))
      .Float(0.25, std::string("loss"))
      .Dict(4, std::string("model_state_dict"))
      .Tensor(std::string("hidden.weight"), DType::kFloat32, {2, 3})
      .Tensor(std::string("hidden.bias"), DType::kFloat32, {2})
      .Tensor(std::string("bn.num_batches_tracked"), DType::kInt64, {}, "", "cuda:1")
      .Tensor(std::string("module.output.weight"), DType::kFloat32, {0, 2})
      .Dict(2, std::string("optimizer_state_dict"))
      .Dict(2, std::string("state"))
      .Dict(1, int64_t{0})
      .Tensor(std::string("momentum_buffer"), DType::kFloat32, {2, 3})
      .Dict(1, int64_t{1})
      .Tensor(std::string("momentum_buffer"), DType::kFloat32, {2})
      .List(1, std::string("param_groups"))
      .Dict(4)
      .Float(0.001, std::string("lr"))
      .Float(0.9, std::string("momentum"))
      .Bool(false, std::string("nesterov"))
      .List(2, std::string("params"))
      .Int(0)
      .Int(1)
      .Dict(n_dtypes, std::string("dtypes"));
  for (uint32_t i = 0; i < n_dtypes; ++i) {
    b.Tensor(std::string(DTypeName(dtypes[i])), dtypes[i], {3, 2});
  }
  b.List(4, std::string("nested"))
      .Tuple(3)
      .Int(-(int64_t{1} << 40))
      .None()
      .Str("h\xc3\xa9llo")
      .List(0)
      .Dict(1)
      .Tensor(int64_t{-3}, DType::kFloat32, {2}, "", "cpu", true)
      .Bytes(std::string("\x00\x80\xff tokenizer", 13))
      .Tensor(std::string("tied"), DType::kFloat16, {4});
  return b;
}

TEST_F(InteropE2E, CppSavesLoadInBothPyTorchVersions) {
  for (const Python& python : {kTorch1, kTorch2}) {
    const std::string name = std::string("interop/cpp/") + python.name;
    const Builder b = CppCheckpoint(python.torch2);
    Save(server_->address(), name, b);
    const std::string file = Path(std::string(python.name) + ".pt");
    CommandResult exp = Ckpt({"export", name, file});
    ASSERT_EQ(exp.exit_code, 0) << exp.err;
    size_t i = 0;
    WriteJson(file + ".json", Json{{"value", Describe(b, &i, false)}});
    const std::string out = Py(python, {Script("check_expected.py"), file, file + ".json"});
    EXPECT_THAT(out, HasSubstr(python.torch2 ? "23 tensors equal" : "20 tensors equal")) << out;
    EXPECT_THAT(out, HasSubstr("devices ['cpu', 'cuda:1']"));
    // PyTorch 1.13's weights_only unpickler has no BINFLOAT nor bytes: it
    // refuses torch.save's own file of this value too.
    EXPECT_THAT(out, HasSubstr(python.torch2 ? "also with weights_only=True"
                                             : "weights_only=True refuses torch.save's own "
                                               "file of this value too"));
  }
}

// ---- safetensors

TEST_F(InteropE2E, SafetensorsOfTheReferencePackageRoundTrip) {
  const std::string ref = Path("ref.safetensors");
  Py(kTorch2, {Script("st_cases.py"), "make", ref});
  CommandResult imp = Ckpt({"import", ref, "interop/st/model"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_THAT(imp.out, HasSubstr("(safetensors, 16 tensors,"));
  CommandResult exp = Ckpt({"export", "interop/st/model", Path("out.safetensors")});
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  EXPECT_THAT(Py(kTorch2, {Script("st_cases.py"), "compare", ref, Path("out.safetensors")}),
              HasSubstr("16 tensors and metadata equal"));
  // The same checkpoint as .pt.
  CommandResult pt = Ckpt({"export", "interop/st/model@latest", Path("out.pt")});
  ASSERT_EQ(pt.exit_code, 0) << pt.err;
  EXPECT_THAT(Py(kTorch2, {Script("st_cases.py"), "compare-pt", ref, Path("out.pt")}),
              HasSubstr("16 tensors equal, also with weights_only=True"));
}

TEST_F(InteropE2E, CppSavesExportToSafetensorsWithFlattenedKeys) {
  Builder b;
  b.Dict(3)
      .Tensor(std::string("embed.weight"), DType::kBFloat16, {4, 2})
      .Dict(2, std::string("layers"))
      .Tensor(std::string("0.weight"), DType::kFloat32, {2, 2})
      .Tensor(int64_t{1}, DType::kInt64, {3})
      .List(1, std::string("extra"))
      .Tensor({}, DType::kBool, {5});
  Save(server_->address(), "interop/st/cpp", b);
  const std::string file = Path("cpp.safetensors");
  CommandResult exp = Ckpt({"export", "interop/st/cpp", file});
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  EXPECT_THAT(exp.out, HasSubstr("(safetensors, 4 tensors, "));
  Builder flat;
  flat.Dict(4)
      .Tensor(std::string("embed.weight"), DType::kBFloat16, {4, 2}, b.data()[1])
      .Tensor(std::string("layers/0.weight"), DType::kFloat32, {2, 2}, b.data()[3])
      .Tensor(std::string("layers/1"), DType::kInt64, {3}, b.data()[4])
      .Tensor(std::string("extra/0"), DType::kBool, {5}, b.data()[6]);
  size_t i = 0;
  WriteJson(file + ".json",
            Json{{"value", Describe(flat, &i, true)}, {"metadata", {{"format", "pt"}}}});
  EXPECT_THAT(Py(kTorch2, {Script("check_expected.py"), file, file + ".json"}),
              HasSubstr("safetensors: 4 tensors equal"));
}

// ---- selection, progress, errors

TEST_F(InteropE2E, KeysSelectOnImportAndExport) {
  const std::string in = Path("sel");
  mkdir(in.c_str(), 0755);
  Py(kTorch2, {Script("torch_cases.py"), "make", in});
  CommandResult imp = Ckpt({"import", in + "/tutorial.pt", "interop/sel/tutorial", "--keys",
                            "model_state_dict/*", "--keys", "epoch"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_THAT(imp.out, HasSubstr("(pt, 4 tensors, "));
  CommandResult exp = Ckpt({"export", "interop/sel/tutorial", Path("sel.safetensors"), "--keys",
                            "model_state_dict/*.weight"});
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  const std::string file = testing::ReadWholeFile(Path("sel.safetensors"));
  auto read = ReadCheckpoint(testing::Span(file), {});
  ASSERT_TRUE(read.ok()) << read.status();
  std::vector<std::string> keys;
  for (size_t i = 1; i < read->tree.size(); ++i) {
    keys.push_back(std::get<std::string>(read->tree[i].key));
  }
  EXPECT_EQ(keys,
            (std::vector<std::string>{"model_state_dict/0.weight", "model_state_dict/2.weight"}));
}

TEST_F(InteropE2E, ProgressBarOnRequest) {
  Builder b;
  b.Dict(1).Tensor(std::string("w"), DType::kFloat32, {1024, 1024});
  const std::string file = Path("p.pt");
  ASSERT_TRUE(WriteFileTo(b, file));
  CommandResult imp = Ckpt({"import", file, "interop/progress", "--progress"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_THAT(imp.err, HasSubstr("import  [####################]  100%  4.0 MiB / 4.0 MiB"));
  CommandResult exp = Ckpt({"export", "interop/progress", Path("q.pt"), "--progress"});
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  EXPECT_THAT(exp.err, HasSubstr("export  [####################]  100%  4.0 MiB / 4.0 MiB"));
  CommandResult quiet = Ckpt({"export", "interop/progress", Path("r.pt")});
  EXPECT_EQ(quiet.err, "");  // not a terminal, no --progress
}

TEST_F(InteropE2E, MalformedFilesAreRefusedThroughTheCli) {
  const std::string in = Path("bad");
  mkdir(in.c_str(), 0755);
  Py(kTorch2, {Script("torch_cases.py"), "make", in});
  const char kEvil[] =
      "\x80\x02"
      "cos\nsystem\nX\x06\x00\x00\x00rm -rf\x85R.";
  const std::string pickle(kEvil, sizeof(kEvil) - 1);
  const std::string evil = testing::MakeZip({{"archive/data.pkl", pickle}});
  std::ofstream(Path("evil.pt"), std::ios::binary) << evil;
  const std::string good = testing::ReadWholeFile(in + "/cnn_state_dict.pt");
  std::ofstream(Path("truncated.pt"), std::ios::binary) << good.substr(0, good.size() * 2 / 3);
  struct {
    std::string file;
    std::string error;
  } cases[] = {
      {Path("evil.pt"),
       "ckpt: INVALID_ARGUMENT: " + Path("evil.pt") +
           ": archive/data.pkl: pickle offset 2: unsupported global 'os.system': this reader "
           "loads tensors, containers and scalars only and never runs code from the file"},
      {Path("truncated.pt"), "not a readable zip archive (truncated?"},
      {in + "/legacy.pt.old", "unsupported legacy format: a bare pickle stream"},
  };
  for (const auto& c : cases) {
    CommandResult r = Ckpt({"import", c.file, "interop/bad"});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.error));
  }
  CommandResult none = Ckpt({"versions", "interop/bad"});
  EXPECT_EQ(none.exit_code, 3);  // nothing was saved

  // A checkpoint with scalars cannot be a safetensors file; no file is left.
  ASSERT_EQ(Ckpt({"import", in + "/tutorial.pt", "interop/tut"}).exit_code, 0);
  CommandResult st = Ckpt({"export", "interop/tut", Path("tut.safetensors")});
  EXPECT_EQ(st.exit_code, 2);
  EXPECT_THAT(st.err, HasSubstr("safetensors holds only tensors: 'epoch' is a int"));
  EXPECT_FALSE(std::ifstream(Path("tut.safetensors")).good());
  CommandResult ext = Ckpt({"export", "interop/tut", Path("tut.xyz")});
  EXPECT_EQ(ext.exit_code, 2);
  EXPECT_THAT(ext.err, HasSubstr("pass --format pt|safetensors"));
  CommandResult forced = Ckpt({"export", "interop/tut", Path("tut.xyz"), "--format", "pt"});
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  CommandResult wrong =
      Ckpt({"import", in + "/tutorial.pt", "interop/tut", "--format", "safetensors"});
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_THAT(wrong.err, HasSubstr("is a pt file, not safetensors"));
}

// A 640 MiB checkpoint goes in and out with the CLI's memory far below the
// file's size, and comes back byte-identical (the writer is deterministic).
TEST_F(InteropE2E, LargeFileStreamsWithBoundedMemory) {
  constexpr int kTensors = 10;
  constexpr int64_t kElements = 16 << 20;  // 64 MiB of float32 each
  Tree tree;
  Node root;
  root.kind = NodeKind::kDict;
  root.size = kTensors;
  tree.push_back(root);
  for (int i = 0; i < kTensors; ++i) {
    Node t;
    t.kind = NodeKind::kTensor;
    t.key = "layer" + std::to_string(i) + ".weight";
    t.tensor.dtype = DType::kFloat32;
    t.tensor.shape = {kElements};
    t.data.size = kElements * 4;
    tree.push_back(t);
  }
  const std::string in = Path("large.pt"), out = Path("large.out.pt");
  {
    auto file = AtomicFileOutput::Create(in);
    ASSERT_TRUE(file.ok());
    auto writer = NewCheckpointWriter(Format::kPt, tree, file->get(), {});
    ASSERT_TRUE(writer.ok());
    std::mt19937_64 rng(7);
    std::string piece(1 << 20, '\0');
    for (int i = 1; i <= kTensors; ++i) {
      for (uint64_t off = 0; off < tree[i].data.size; off += piece.size()) {
        for (size_t k = 0; k < piece.size(); k += 8) {
          const uint64_t v = rng();
          std::memcpy(&piece[k], &v, 8);
        }
        ASSERT_TRUE((*writer)->Write(i, off, piece).ok());
      }
    }
    ASSERT_TRUE((*writer)->Finish().ok());
    ASSERT_TRUE((*file)->Commit().ok());
  }
  // Peak resident memory of each ckpt process (wait4's rusage of that child).
  auto measured = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {ckpt::testing::CliBinary(), "--server", server_->address()});
    const pid_t pid = fork();
    if (pid == 0) {
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    int status = 0;
    struct rusage usage {};
    wait4(pid, &status, 0, &usage);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << args[3];
    return usage.ru_maxrss / 1024;  // MiB
  };
  const long import_mib = measured({"import", in, "interop/large"});
  const long export_mib = measured({"export", "interop/large", out});
  std::printf("peak RSS of ckpt for a 640 MiB file: import %ld MiB, export %ld MiB\n", import_mib,
              export_mib);
  EXPECT_LT(import_mib, 256);
  EXPECT_LT(export_mib, 256);
  auto a = MappedFile::Open(in);
  auto b = MappedFile::Open(out);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->bytes().size(), (*b)->bytes().size());
  EXPECT_TRUE(std::equal((*a)->bytes().begin(), (*a)->bytes().end(), (*b)->bytes().begin()));
}

}  // namespace
}  // namespace ckpt::interop
