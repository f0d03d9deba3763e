// libFuzzer target: the restricted unpickler and the pickle -> tree
// conversion on arbitrary bytes. On success, the tree must be consistent and
// survive a round trip through the .pt writer and reader.

#include <cstddef>
#include <cstdint>
#include <string>

#include "interop/checkpoint.h"
#include "interop/file_io.h"
#include "interop/pickle.h"

using namespace ckpt;
using namespace ckpt::interop;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  PickleOptions pickle_options;
  pickle_options.max_objects = 200000;
  auto value = ParsePickle({reinterpret_cast<const char*>(data), size}, pickle_options);
  if (!value.ok()) return 0;
  // Every storage exists and holds up to 64 KiB of bytes.
  static const std::string storage(1 << 16, '\x5a');
  ReadOptions options;
  options.max_nodes = 100000;
  options.max_copied_bytes = 1 << 26;
  ImportedCheckpoint out;
  auto status = PickleToTree(
      *value,
      [](const StorageRef& ref) -> absl::StatusOr<absl::Span<const uint8_t>> {
        auto n = StorageNumBytes(ref);
        if (!n.ok()) return n.status();
        if (*n > storage.size()) return absl::InvalidArgumentError("storage too large");
        return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(storage.data()), *n);
      },
      options, &out);
  if (!status.ok()) return 0;
  if (out.bytes.size() != out.tree.size()) __builtin_trap();
  for (size_t i = 0; i < out.tree.size(); ++i) {
    if (out.tree[i].has_data() && out.bytes[i].size() != out.tree[i].data.size) __builtin_trap();
  }
  // Write it as .pt and read it back: same shape of tree, same bytes.
  StringOutput file;
  auto writer = NewCheckpointWriter(Format::kPt, out.tree, &file, {});
  if (!writer.ok()) return 0;  // e.g. a dtype .pt cannot hold
  for (size_t i = 0; i < out.tree.size(); ++i) {
    if (!out.tree[i].has_data()) continue;
    const auto& b = out.bytes[i];
    if (!(*writer)->Write(i, 0, {reinterpret_cast<const char*>(b.data()), b.size()}).ok()) {
      __builtin_trap();
    }
  }
  if (!(*writer)->Finish().ok()) __builtin_trap();
  const std::string& bytes = file.data();
  auto back = ReadCheckpoint({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, {});
  if (!back.ok() || back->tree.size() != out.tree.size()) __builtin_trap();
  for (size_t i = 0; i < out.tree.size(); ++i) {
    const Node& a = out.tree[i];
    const Node& b = back->tree[i];
    if (a.kind != b.kind || a.key != b.key || a.size != b.size || a.int_value != b.int_value ||
        a.string_value != b.string_value || a.data.size != b.data.size ||
        out.bytes[i] != back->bytes[i]) {
      __builtin_trap();
    }
  }
  return 0;
}
