// Retention policies of the RocksDB store and Prune, which applies them
// through DeleteVersion.

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/retention.h"
#include "common/status_macros.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::Quote;

absl::Status RocksDbStore::SetRetention(absl::string_view name, const RetentionPolicy& policy) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateRetentionPolicy(policy));
  const std::string key = RetentionKey(name);
  const absl::string_view what = "setting the retention policy of ";
  if (!policy.enabled()) {
    return FromRocksDb(core_->DeleteOne(core_->CommitWriteOptions(), core_->manifests_cf, key),
                       absl::StrCat(what, Quote(name)));
  }
  return FromRocksDb(core_->PutOne(core_->CommitWriteOptions(), core_->manifests_cf, key,
                                   EncodeRetentionPolicy(policy)),
                     absl::StrCat(what, Quote(name)));
}

absl::StatusOr<RetentionPolicy> RocksDbStore::GetRetention(absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  std::string value;
  rocksdb::Status s =
      core_->db->Get(rocksdb::ReadOptions(), core_->manifests_cf, RetentionKey(name), &value);
  if (s.IsNotFound()) return RetentionPolicy{};
  const std::string context = absl::StrCat("retention policy of ", Quote(name));
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, context));
  auto policy = DecodeRetentionPolicy(value);
  if (!policy.ok()) return Annotate(policy.status(), context);
  return policy;
}

absl::StatusOr<std::vector<uint64_t>> RocksDbStore::Prune(absl::string_view name, bool dry_run) {
  return internal::PruneVersions(*this, name, dry_run);
}

}  // namespace ckpt::storage
