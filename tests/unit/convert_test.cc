// rpc/convert: every value type survives ToProto then FromProto unchanged,
// and the protobuf fields it fills are the ones the wire names.

#include "rpc/convert.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace ckpt::rpc {
namespace {

TEST(ConvertTest, TimestampsRoundTripToTheMillisecond) {
  for (int64_t ms : {int64_t{0}, int64_t{1}, int64_t{999}, int64_t{1000}, int64_t{1700000000123},
                     int64_t{-1}, int64_t{-999}, int64_t{-1000}, int64_t{-1001}}) {
    google::protobuf::Timestamp proto;
    TimestampToProto(ms, &proto);
    EXPECT_GE(proto.nanos(), 0) << ms;
    EXPECT_LT(proto.nanos(), 1000000000) << ms;
    EXPECT_EQ(TimestampFromProto(proto), ms);
  }
  google::protobuf::Timestamp proto;
  TimestampToProto(1500, &proto);
  EXPECT_EQ(proto.seconds(), 1);
  EXPECT_EQ(proto.nanos(), 500000000);
}

TEST(ConvertTest, VersionInfoRoundTrips) {
  VersionInfo info;
  info.name = "team/run/model";
  info.version = 7;
  info.create_time_ms = 1700000000123;
  info.step = 100;
  info.epoch = 3;
  info.metadata = {{"loss", "0.25"}, {"lr", "1e-3"}};
  info.tags = {"best", "latest"};
  info.num_tensors = 4;
  info.num_nodes = 9;
  info.data_bytes = 1 << 20;
  info.new_bytes = 4096;
  info.world_size = 2;
  v1::VersionInfo proto;
  ToProto(info, &proto);
  const VersionInfo back = FromProto(proto);
  EXPECT_EQ(back.name, info.name);
  EXPECT_EQ(back.version, info.version);
  EXPECT_EQ(back.create_time_ms, info.create_time_ms);
  EXPECT_EQ(back.step, info.step);
  EXPECT_EQ(back.epoch, info.epoch);
  EXPECT_EQ(back.metadata, info.metadata);
  EXPECT_EQ(back.tags, info.tags);
  EXPECT_EQ(back.num_tensors, info.num_tensors);
  EXPECT_EQ(back.num_nodes, info.num_nodes);
  EXPECT_EQ(back.data_bytes, info.data_bytes);
  EXPECT_EQ(back.new_bytes, info.new_bytes);
  EXPECT_EQ(back.world_size, info.world_size);
}

TEST(ConvertTest, RetentionPolicyRoundTrips) {
  RetentionPolicy policy;
  policy.keep_last = 3;
  policy.keep_every_steps = 1000;
  policy.keep_best = 2;
  policy.metric = "accuracy";
  policy.higher_is_better = true;
  v1::RetentionPolicy proto;
  ToProto(policy, &proto);
  const RetentionPolicy back = FromProto(proto);
  EXPECT_EQ(back.keep_last, policy.keep_last);
  EXPECT_EQ(back.keep_every_steps, policy.keep_every_steps);
  EXPECT_EQ(back.keep_best, policy.keep_best);
  EXPECT_EQ(back.metric, policy.metric);
  EXPECT_EQ(back.higher_is_better, policy.higher_is_better);
}

TEST(ConvertTest, CheckpointSummaryRoundTrips) {
  CheckpointSummary summary;
  summary.name = "team/run/model";
  summary.latest_version = 12;
  summary.num_versions = 5;
  summary.latest_create_time_ms = 1700000000456;
  v1::CheckpointSummary proto;
  ToProto(summary, &proto);
  EXPECT_EQ(proto.latest_create_time().seconds(), 1700000000);
  const CheckpointSummary back = FromProto(proto);
  EXPECT_EQ(back.name, summary.name);
  EXPECT_EQ(back.latest_version, summary.latest_version);
  EXPECT_EQ(back.num_versions, summary.num_versions);
  EXPECT_EQ(back.latest_create_time_ms, summary.latest_create_time_ms);
}

TEST(ConvertTest, TensorSliceRoundTrips) {
  const TensorSlice slice{"model/fc.weight", {2, 0}, {3, 16}};
  v1::TensorSlice proto;
  ToProto(slice, &proto);
  const TensorSlice back = FromProto(proto);
  EXPECT_EQ(back.key, slice.key);
  EXPECT_EQ(back.start, slice.start);
  EXPECT_EQ(back.length, slice.length);
}

// Tensor statistics ride in the tensor's meta of a node.
TEST(ConvertTest, NodeStatsRoundTrip) {
  Node node;
  node.kind = NodeKind::kTensor;
  node.key = std::string("w");
  node.tensor.dtype = DType::kBFloat16;
  node.tensor.shape = {4};
  node.data.size = 8;
  node.data.chunk_size = 8;
  node.data.chunks = {Digest::Of("w")};
  TensorStats stats;
  stats.count = 4;
  stats.min = -1.5;
  stats.max = 2.25;
  stats.mean = 0.125;
  stats.std = 1.75;
  stats.l2 = 3.5;
  stats.nan = 1;
  stats.pos_inf = 0;
  stats.neg_inf = 1;
  node.tensor.stats = stats;
  v1::Node proto;
  ToProto(node, &proto);
  EXPECT_EQ(proto.tensor().stats().neg_inf(), 1u);
  auto back = FromProto(proto);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->tensor.stats.has_value());
  EXPECT_TRUE(*back->tensor.stats == stats);
  // A node without statistics stays without.
  node.tensor.stats.reset();
  proto.Clear();
  ToProto(node, &proto);
  EXPECT_FALSE(proto.tensor().has_stats());
  back = FromProto(proto);
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back->tensor.stats.has_value());
}

StoreStats SomeStats() {
  StoreStats stats;
  stats.checkpoints = 2;
  stats.versions = 9;
  stats.chunks = 40;
  stats.stored_bytes = 1000;
  stats.logical_bytes = 2500;
  stats.disk_bytes = 1200;
  stats.active_uploads = 1;
  stats.garbage_bytes = 77;
  return stats;
}

void ExpectSameStats(const StoreStats& a, const StoreStats& b) {
  EXPECT_EQ(a.checkpoints, b.checkpoints);
  EXPECT_EQ(a.versions, b.versions);
  EXPECT_EQ(a.chunks, b.chunks);
  EXPECT_EQ(a.stored_bytes, b.stored_bytes);
  EXPECT_EQ(a.logical_bytes, b.logical_bytes);
  EXPECT_EQ(a.disk_bytes, b.disk_bytes);
  EXPECT_EQ(a.active_uploads, b.active_uploads);
  EXPECT_EQ(a.garbage_bytes, b.garbage_bytes);
}

TEST(ConvertTest, StoreStatsRoundTripWithoutADedupRatio) {
  v1::StorageStats proto;
  ToProto(SomeStats(), &proto);
  EXPECT_EQ(proto.dedup_ratio(), 0);
  ExpectSameStats(FromProto(proto), SomeStats());
}

TEST(ConvertTest, ServerInfoRoundTripsWithItsDedupRatio) {
  ServerInfo info;
  info.server_version = "1.2.3";
  info.chunk_size = 4 << 20;
  info.max_message_bytes = 64 << 20;
  info.stats = SomeStats();
  info.dedup_ratio = 2.5;
  v1::GetServerInfoResponse proto;
  ToProto(info, &proto);
  EXPECT_EQ(proto.stats().dedup_ratio(), 2.5);
  const ServerInfo back = FromProto(proto);
  EXPECT_EQ(back.server_version, info.server_version);
  EXPECT_EQ(back.chunk_size, info.chunk_size);
  EXPECT_EQ(back.max_message_bytes, info.max_message_bytes);
  ExpectSameStats(back.stats, info.stats);
  EXPECT_EQ(back.dedup_ratio, info.dedup_ratio);
}

TEST(ConvertTest, NamespaceUsageRoundTrips) {
  NamespaceUsage usage;
  usage.ns = "team";
  usage.used_bytes = 123456;
  usage.quota_bytes = 1 << 30;
  v1::GetUsageResponse proto;
  ToProto(usage, &proto);
  EXPECT_EQ(proto.namespace_(), "team");
  const NamespaceUsage back = FromProto(proto);
  EXPECT_EQ(back.ns, usage.ns);
  EXPECT_EQ(back.used_bytes, usage.used_bytes);
  EXPECT_EQ(back.quota_bytes, usage.quota_bytes);
}

TEST(ConvertTest, GcResultRoundTrips) {
  GcResult gc;
  gc.chunks_removed = 5;
  gc.bytes_removed = 5000;
  gc.orphan_uploads_removed = 2;
  v1::GarbageCollectResponse proto;
  ToProto(gc, &proto);
  const GcResult back = FromProto(proto);
  EXPECT_EQ(back.chunks_removed, gc.chunks_removed);
  EXPECT_EQ(back.bytes_removed, gc.bytes_removed);
  EXPECT_EQ(back.orphan_uploads_removed, gc.orphan_uploads_removed);
}

TEST(ConvertTest, BackupInfoRoundTrips) {
  BackupInfo backup;
  backup.name = "ckpt-backup-20260101T000000Z";
  backup.path = "/backups/ckpt-backup-20260101T000000Z";
  backup.files = 12;
  backup.bytes = 1 << 20;
  backup.versions = 30;
  v1::BackupResponse proto;
  ToProto(backup, &proto);
  const BackupInfo back = FromProto(proto);
  EXPECT_EQ(back.name, backup.name);
  EXPECT_EQ(back.path, backup.path);
  EXPECT_EQ(back.files, backup.files);
  EXPECT_EQ(back.bytes, backup.bytes);
  EXPECT_EQ(back.versions, backup.versions);
}

}  // namespace
}  // namespace ckpt::rpc
