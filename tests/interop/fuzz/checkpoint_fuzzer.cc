// libFuzzer target: ReadCheckpoint on whole files (format detection, the zip
// reader, data.pkl, storages, safetensors).

#include <cstddef>
#include <cstdint>

#include "interop/checkpoint.h"

using namespace ckpt;
using namespace ckpt::interop;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ReadOptions options;
  options.max_nodes = 100000;
  options.max_objects = 200000;
  options.max_copied_bytes = 1 << 26;
  auto read = ReadCheckpoint({data, size}, options);
  if (!read.ok()) return 0;
  if (read->bytes.size() != read->tree.size()) __builtin_trap();
  for (size_t i = 0; i < read->tree.size(); ++i) {
    const auto& b = read->bytes[i];
    if (read->tree[i].has_data() && b.size() != read->tree[i].data.size) __builtin_trap();
    // Spans lie inside the file or inside buffers the result owns.
    if (!b.empty() && (b.data() < data || b.data() + b.size() > data + size)) {
      bool owned = false;
      for (const std::string& o : read->owned) {
        const auto* p = reinterpret_cast<const uint8_t*>(o.data());
        if (b.data() >= p && b.data() + b.size() <= p + o.size()) owned = true;
      }
      if (!owned) __builtin_trap();
    }
  }
  return 0;
}
