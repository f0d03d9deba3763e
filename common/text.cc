#include "common/text.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"

namespace ckpt {
namespace {

// C-style escapes for control characters, backslash and `quote` (if not 0);
// bytes >= 0x80 are left alone so UTF-8 text stays readable.
std::string Escape(absl::string_view s, char quote) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (quote != 0 && c == quote) {
          out += '\\';
          out += c;
        } else if (IsControlChar(c)) {
          absl::StrAppendFormat(&out, "\\x%02x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string ContainerText(absl::string_view kind, uint32_t size) {
  return absl::StrCat(kind, " (", size, ")");
}

}  // namespace

bool IsControlChar(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

const char* ValueTypeName(NodeKind kind) {
  switch (kind) {
    case NodeKind::kDict:
      return "dict";
    case NodeKind::kList:
      return "list";
    case NodeKind::kTuple:
      return "tuple";
    case NodeKind::kNone:
      return "none";
    case NodeKind::kBool:
      return "bool";
    case NodeKind::kInt:
      return "int";
    case NodeKind::kFloat:
      return "float";
    case NodeKind::kString:
      return "string";
    case NodeKind::kTensor:
      return "tensor";
    case NodeKind::kBytes:
      return "bytes";
  }
  return "unknown";
}

std::string FormatTime(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  size_t unit = 0;
  // 1023.95 would print as "1024.0": move to the next unit instead.
  while (value >= 1023.95 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string HumanAndExactBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " bytes");
  return absl::StrCat(HumanBytes(bytes), " (", bytes, " bytes)");
}

std::string FormatFloat(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof(buf), value);
  std::string text(buf, result.ptr);
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

std::string Printable(absl::string_view s) {
  if (std::none_of(s.begin(), s.end(), IsControlChar)) return std::string(s);
  return Escape(s, 0);
}

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", Escape(s, '"'), "\""); }

std::string DescribeNode(const Node& node) {
  switch (node.kind) {
    case NodeKind::kDict:
    case NodeKind::kList:
    case NodeKind::kTuple:
      return ContainerText(ValueTypeName(node.kind), node.size);
    case NodeKind::kNone:
      return "None";
    case NodeKind::kBool:
      return node.bool_value ? "True" : "False";
    case NodeKind::kInt:
      return absl::StrCat(node.int_value);
    case NodeKind::kFloat:
      return FormatFloat(node.float_value);
    case NodeKind::kString:
      return Quoted(node.string_value);
    case NodeKind::kTensor: {
      std::string text =
          absl::StrCat(DTypeName(node.tensor.dtype), " ", ShapeText(node.tensor.shape), "  ",
                       HumanBytes(node.data.size), "  ", Printable(node.tensor.device));
      if (node.tensor.requires_grad) text += "  requires_grad";
      return text;
    }
    case NodeKind::kBytes:
      return absl::StrCat("bytes ", HumanBytes(node.data.size));
  }
  return "?";
}

}  // namespace ckpt
