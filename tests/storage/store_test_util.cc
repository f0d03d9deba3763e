#include "tests/storage/store_test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <system_error>
#include <utility>
#include <variant>

#include "common/status_macros.h"
#include "storage/rados_store.h"
#include "storage/rocksdb_store.h"
#include "tests/testing/ceph_cluster.h"
#include "tests/testing/status_matchers.h"

namespace ckpt::storage::test {

namespace fs = std::filesystem;

std::string BackendName(Backend backend) {
  switch (backend) {
    case Backend::kRocksDb:
      return "RocksDb";
    case Backend::kRados:
      return "Rados";
  }
  return "Unknown";
}

absl::StatusOr<StoreOptions> BackendOptions(Backend backend, const StoreOptions& options) {
  StoreOptions out = options;
  if (backend != Backend::kRados) return out;
  // The test cluster; the store's own RADOS namespaces, named after its
  // directory. No grace: one clock.
  absl::StatusOr<std::string> conf = ckpt::testing::TestCephConf();
  if (!conf.ok()) return conf.status();
  out.backend = StoreBackend::kRados;
  out.rados.conf_file = *conf;
  out.rados.data_pool = ckpt::testing::kTestDataPool;
  out.rados.namespace_prefix = fs::path(options.path).parent_path().filename().string() + "/";
  out.rados.gc_grace = absl::ZeroDuration();
  out.rados.upload_lease = kTestUploadLease;
  return out;
}

absl::StatusOr<std::unique_ptr<Store>> OpenStore(Backend backend, const StoreOptions& options) {
  switch (backend) {
    case Backend::kRocksDb: {
      auto store = RocksDbStore::Open(options);
      if (!store.ok()) return store.status();
      return std::unique_ptr<Store>(std::move(store).value());
    }
    case Backend::kRados: {
      CKPT_ASSIGN_OR_RETURN(StoreOptions rados, BackendOptions(backend, options));
      auto store = RadosStore::Open(rados);
      if (!store.ok()) return store.status();
      return std::unique_ptr<Store>(std::move(store).value());
    }
  }
  return absl::InvalidArgumentError("unknown backend");
}

absl::StatusOr<uint64_t> CountStoredChunks(Backend backend, Store& store) {
  switch (backend) {
    case Backend::kRocksDb:
      return static_cast<RocksDbStore&>(store).CountChunkKeys();
    case Backend::kRados:
      return static_cast<RadosStore&>(store).CountChunkObjects();
  }
  return absl::InvalidArgumentError("unknown backend");
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

Tree MakeTree(const std::vector<Blob>& blobs) {
  Tree tree(1);
  tree[0].kind = NodeKind::kDict;
  tree[0].size = blobs.size();
  for (const Blob& b : blobs) {
    Node n;
    n.kind = NodeKind::kTensor;
    n.key = b.key;
    n.tensor.dtype = DType::kUInt8;
    n.tensor.shape = {static_cast<int64_t>(b.bytes.size())};
    n.data.size = b.bytes.size();
    n.data.chunk_size = kChunk;
    for (size_t off = 0; off < b.bytes.size(); off += kChunk) {
      n.data.chunks.push_back(Digest::Of(absl::string_view(b.bytes).substr(off, kChunk)));
    }
    tree.push_back(std::move(n));
  }
  return tree;
}

absl::Span<const uint8_t> AsBytes(absl::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

absl::Status UploadMissing(Upload& up, const std::vector<Blob>& blobs) {
  for (const Blob& b : blobs) {
    std::vector<absl::string_view> pieces;
    std::vector<Digest> digests;
    for (size_t off = 0; off < b.bytes.size(); off += kChunk) {
      pieces.push_back(absl::string_view(b.bytes).substr(off, kChunk));
      digests.push_back(Digest::Of(pieces.back()));
    }
    auto missing = up.FindMissing(digests);
    if (!missing.ok()) return missing.status();
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (!(*missing)[i]) continue;
      absl::Status s = up.PutChunk(digests[i], AsBytes(pieces[i]));
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

const std::vector<Blob>& Model() {
  static const auto* blobs = new std::vector<Blob>{
      {"fc.weight", RandomBytes(3500, 1)},  // 4 chunks, the last of 500 bytes.
      {"fc.bias", RandomBytes(10, 2)},
      {"empty", ""},
  };
  return *blobs;
}

void StoreHarness::StartStore(Backend backend) {
  backend_ = backend;
  std::string tmpl = (fs::temp_directory_path() / "ckpt-store-test-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  dir_ = tmpl;
  Reopen();
}

void StoreHarness::StopStore() {
  store_.reset();
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

StoreOptions StoreHarness::Options() const {
  StoreOptions o;
  o.path = (fs::path(dir_) / "db").string();
  o.reserved_disk_bytes = 0;  // temp dirs may sit on a nearly full disk
  o.max_chunk_bytes = 4 * kChunk;
  o.namespace_quota_bytes = quota_;
  o.namespace_quotas = quotas_;
  return o;
}

void StoreHarness::Reopen() {
  store_.reset();
  ASSERT_OK_AND_ASSIGN(store_, OpenStore(backend_, Options()));
}

void StoreHarness::Close() { store_.reset(); }

absl::StatusOr<VersionInfo> StoreHarness::Save(const std::string& name,
                                               const std::vector<Blob>& blobs,
                                               std::vector<std::string> tags) {
  auto up = store_->BeginUpload(name);
  if (!up.ok()) return up.status();
  absl::Status s = UploadMissing(**up, blobs);
  if (!s.ok()) return s;
  CommitSpec spec;
  spec.name = name;
  spec.tree = MakeTree(blobs);
  spec.tags = std::move(tags);
  Upload* ups[] = {up->get()};
  return store_->Commit(std::move(spec), ups);
}

void StoreHarness::ExpectContents(const std::string& name, uint64_t version,
                                  const std::vector<Blob>& blobs) {
  ASSERT_OK_AND_ASSIGN(Tree tree, store_->GetTree(name, version));
  ASSERT_EQ(tree.size(), blobs.size() + 1);
  for (size_t i = 0; i < blobs.size(); ++i) {
    const Node& n = tree[i + 1];
    EXPECT_EQ(std::get<std::string>(n.key), blobs[i].key);
    std::string bytes, chunk;
    for (const Digest& d : n.data.chunks) {
      ASSERT_OK(store_->ReadChunk(name, d, &chunk));
      bytes += chunk;
    }
    EXPECT_EQ(bytes, blobs[i].bytes) << blobs[i].key;
  }
}

uint64_t StoreHarness::UsedBytes(const std::string& ns) {
  if (backend_ == Backend::kRados) {
    auto gc = store_->CollectGarbage();
    EXPECT_TRUE(gc.ok()) << gc.status();
  }
  return store_->NamespaceBytes(ns);
}

uint64_t StoreHarness::StoredChunks() {
  auto n = CountStoredChunks(backend_, *store_);
  EXPECT_TRUE(n.ok()) << n.status();
  return n.value_or(0);
}

}  // namespace ckpt::storage::test
