// The namespace quota rule, for the store's commit and the service's early
// check before any chunk is sent.

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "storage/store.h"

namespace ckpt::storage {

uint64_t NamespaceQuota(const StoreOptions& options, absl::string_view ns) {
  auto it = options.namespace_quotas.find(std::string(ns));
  return it != options.namespace_quotas.end() ? it->second : options.namespace_quota_bytes;
}

absl::Status CheckQuota(const StoreOptions& options, absl::string_view name, uint64_t used,
                        uint64_t added) {
  const absl::string_view ns = NamespaceOf(name);
  const uint64_t quota = NamespaceQuota(options, ns);
  if (quota == 0 || (added <= quota && used <= quota - added)) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("namespace '", ns, "' quota exceeded: it holds ", used, " bytes, '", name,
                   "' would add ", added, ", the quota is ", quota, " bytes; nothing was saved"));
}

}  // namespace ckpt::storage
