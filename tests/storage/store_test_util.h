#ifndef CKPT_TESTS_STORAGE_STORE_TEST_UTIL_H_
#define CKPT_TESTS_STORAGE_STORE_TEST_UTIL_H_

// What the Store conformance suite (store_test.cc) and the backend-specific
// store tests share: the backends and their factory, a fixture that opens a
// store in a fresh temporary directory, and small trees of uint8 tensors.
//
// Adding a backend: a value in `Backend`, a case in each function of
// store_test_util.cc (BackendName, OpenStore, CountStoredChunks), and the
// value in the INSTANTIATE_TEST_SUITE_P of store_test.cc.

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/types.h"
#include "storage/store.h"

namespace ckpt::storage::test {

/// The Store backends the conformance suite runs over.
enum class Backend { kRocksDb, kRados };

/// The RADOS stores' upload lease in tests: an upload of a "previous
/// process" (one never destroyed) is collectable this long after its last
/// use.
inline constexpr absl::Duration kTestUploadLease = absl::Seconds(3);

/// "RocksDb": the name of `backend` in test names.
std::string BackendName(Backend backend);

/// `options` for `backend`: as is for RocksDB; for RADOS, the test cluster
/// (ckpt::testing::TestCephConf) with RADOS namespaces of their own named
/// after options.path's directory, no gc grace and kTestUploadLease.
absl::StatusOr<StoreOptions> BackendOptions(Backend backend, const StoreOptions& options);

/// Opens (creating) a store of `backend` with `options`; options.path is a
/// directory of its own that the backend may use as it likes (a backend
/// without local files derives a unique pool or prefix name from it).
absl::StatusOr<std::unique_ptr<Store>> OpenStore(Backend backend, const StoreOptions& options);

/// How many chunks `store` physically holds: referenced ones plus garbage
/// not reclaimed yet (for RocksDB: the keys of the chunks column family).
/// What the suite checks garbage collection's reclaiming against.
absl::StatusOr<uint64_t> CountStoredChunks(Backend backend, Store& store);

/// Chunk size of every tree below; small chunks keep the tests fast.
inline constexpr uint32_t kChunk = 1000;

/// `n` pseudo-random bytes, the same for the same seed.
std::string RandomBytes(size_t n, uint32_t seed);

/// One uint8 tensor leaf of a flat dict.
struct Blob {
  std::string key;
  std::string bytes;
};

/// {key: uint8[len]} for each blob, chunked at kChunk.
Tree MakeTree(const std::vector<Blob>& blobs);

absl::Span<const uint8_t> AsBytes(absl::string_view s);

/// Sends the chunks of `blobs` that `up` reports missing.
absl::Status UploadMissing(Upload& up, const std::vector<Blob>& blobs);

/// A small model: fc.weight (3500 bytes: 4 chunks, the last of 500),
/// fc.bias (10 bytes) and an empty tensor. 5 chunks, 3510 bytes.
const std::vector<Blob>& Model();

/// A store of one backend in a fresh temporary directory, removed with it.
/// Used by the conformance suite's fixture and by backend-specific tests.
class StoreHarness {
 public:
  /// Makes the directory and opens the store (fails the test on error).
  void StartStore(Backend backend);
  /// Closes the store and removes the directory.
  void StopStore();

  /// Options of the store under test: reserved_disk_bytes 0 (temp dirs may
  /// sit on a nearly full disk), max_chunk_bytes 4 * kChunk, the quotas of
  /// quota_ and quotas_.
  StoreOptions Options() const;

  /// Closes and opens the store again (with Options()).
  void Reopen();
  void Close();

  /// Uploads what is missing and commits a new version of `name`.
  absl::StatusOr<VersionInfo> Save(const std::string& name, const std::vector<Blob>& blobs,
                                   std::vector<std::string> tags = {});

  /// Reads back every leaf of a committed version and compares.
  void ExpectContents(const std::string& name, uint64_t version, const std::vector<Blob>& blobs);

  /// CountStoredChunks of the store under test (0 and a failure on error).
  uint64_t StoredChunks();

  /// NamespaceBytes(ns) where the backend makes it exact: RADOS counts
  /// exactly as of its last collection (between collections commits add
  /// what they wrote and deletes subtract), so one runs first there.
  uint64_t UsedBytes(const std::string& ns);

 protected:
  Backend backend_ = Backend::kRocksDb;
  std::string dir_;
  std::unique_ptr<Store> store_;
  uint64_t quota_ = 0;                      // namespace_quota_bytes of Reopen()
  std::map<std::string, uint64_t> quotas_;  // namespace_quotas of Reopen()
};

/// The conformance suite's fixture: one store of the backend under test,
/// in a fresh directory per test. Its cases are spread over store_test.cc,
/// store_chunks_test.cc and store_admin_test.cc (one binary); store_test.cc
/// instantiates them for every backend.
class StoreTest : public StoreHarness, public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { StartStore(GetParam()); }
  void TearDown() override { StopStore(); }
};

}  // namespace ckpt::storage::test

#endif  // CKPT_TESTS_STORAGE_STORE_TEST_UTIL_H_
