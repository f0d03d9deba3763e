// libFuzzer target: the safetensors header parser on arbitrary JSON text,
// and the whole-file reader on the same bytes behind a length prefix. On
// success every entry must lie inside the data and none may overlap.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "interop/safetensors.h"

using namespace ckpt::interop;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  constexpr uint64_t kDataSize = 4096;
  auto header = ParseSafetensorsHeader(json, kDataSize, 10000);
  if (header.ok()) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const auto& e : header->entries) {
      if (e.begin > e.end || e.end > kDataSize) __builtin_trap();
      ranges.emplace_back(e.begin, e.end);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].first < ranges[i - 1].second) __builtin_trap();
    }
  }
  // The same header inside a file with kDataSize bytes of data.
  std::string file;
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<char>((size >> (8 * i)) & 0xff));
  file += json;
  file.append(kDataSize, '\0');
  ReadOptions options;
  options.max_nodes = 10001;
  auto read =
      ReadSafetensors({reinterpret_cast<const uint8_t*>(file.data()), file.size()}, options);
  if (read.ok() != header.ok()) __builtin_trap();
  if (read.ok()) {
    for (size_t i = 0; i < read->tree.size(); ++i) {
      if (read->bytes[i].size() != read->tree[i].data.size) __builtin_trap();
    }
  }
  return 0;
}
