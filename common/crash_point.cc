#include "common/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"

namespace ckpt {
namespace {

struct Armed {
  std::string name;
  long target = 0;
  std::atomic<long> passes{0};
};

// Parsed once; nullptr when CKPT_TEST_CRASH_AT is unset or malformed.
Armed* Load() {
  const char* env = std::getenv("CKPT_TEST_CRASH_AT");
  if (env == nullptr) return nullptr;
  std::string spec(env);
  size_t colon = spec.rfind(':');
  auto* armed = new Armed;
  armed->name = spec.substr(0, colon);
  armed->target = 1;
  if (colon != std::string::npos && !absl::SimpleAtoi(spec.substr(colon + 1), &armed->target)) {
    armed->target = 1;
  }
  return armed;
}

}  // namespace

void CrashPoint(absl::string_view name) {
  static Armed* armed = Load();
  if (armed == nullptr || armed->name != name) return;
  if (armed->passes.fetch_add(1) + 1 == armed->target) {
    raise(SIGKILL);
  }
}

}  // namespace ckpt
