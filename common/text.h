#ifndef CKPT_COMMON_TEXT_H_
#define CKPT_COMMON_TEXT_H_

// Text renderings of ckpt's value types shared by the `ckpt` command
// (cli/format.h) and the server's web page: times, sizes, floats, escaped
// strings and one-line node descriptions. Pure functions.

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/types.h"

namespace ckpt {

/// ISO-8601 UTC time with second precision: "2024-05-01T12:34:56Z".
std::string FormatTime(int64_t unix_ms);

/// Binary-prefixed size: "0 B", "24 B", "1.0 KiB", "1.5 GiB" (one decimal
/// from KiB up).
std::string HumanBytes(uint64_t bytes);

/// "1.5 GiB (1610612736 bytes)"; just "24 bytes" below 1 KiB.
std::string HumanAndExactBytes(uint64_t bytes);

/// Shortest decimal that reads back as the same double (std::to_chars), with
/// ".0" added to integral values so floats stay recognisable ("1.0", "0.25",
/// "1e-05", "inf", "-inf", "nan").
std::string FormatFloat(double value);

/// Whether `c` is an ASCII control character (below 0x20, or 0x7f).
bool IsControlChar(char c);

/// `s` as is when it holds no control characters, else C-escaped
/// (absl::CEscape), so one value always prints on one line.
std::string Printable(absl::string_view s);

/// `s` in double quotes with C escapes ("a\"b", "tab\there").
std::string Quoted(absl::string_view s);

/// The type of a node as the CLI's JSON and the web page name it: "dict",
/// "list", "tuple", "none", "bool", "int", "float", "string", "tensor",
/// "bytes". Fixed (part of the JSON format), unlike NodeKindName.
const char* ValueTypeName(NodeKind kind);

/// Text of a scalar or leaf node without its key: `5`, `0.25`, `True`,
/// `None`, `"text"`, `float32 [2, 3]  24 B  cpu`, `bytes 1.2 MiB`,
/// `dict (3)`.
std::string DescribeNode(const Node& node);

}  // namespace ckpt

#endif  // CKPT_COMMON_TEXT_H_
