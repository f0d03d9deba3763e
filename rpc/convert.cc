#include "rpc/convert.h"

#include "absl/strings/str_cat.h"

namespace ckpt::rpc {
namespace {

absl::Status DataFromProto(const v1::DataRef& proto, DataRef* data) {
  data->size = proto.size();
  data->chunk_size = proto.chunk_size();
  data->chunks.reserve(proto.chunks_size());
  for (const std::string& raw : proto.chunks()) {
    auto digest = Digest::FromBytes(raw);
    if (!digest.ok()) return digest.status();
    data->chunks.push_back(*digest);
  }
  return absl::OkStatus();
}

void DataToProto(const DataRef& data, v1::DataRef* proto) {
  proto->set_size(data.size);
  proto->set_chunk_size(data.chunk_size);
  auto* chunks = proto->mutable_chunks();
  chunks->Reserve(static_cast<int>(data.chunks.size()));
  for (const Digest& d : data.chunks) chunks->Add(std::string(d.view()));
}

}  // namespace

absl::StatusOr<Node> FromProto(const v1::Node& proto) {
  Node node;
  switch (proto.key_case()) {
    case v1::Node::kStrKey:
      node.key = proto.str_key();
      break;
    case v1::Node::kIntKey:
      node.key = proto.int_key();
      break;
    case v1::Node::KEY_NOT_SET:
      break;
  }
  switch (proto.value_case()) {
    case v1::Node::kDict:
      node.kind = NodeKind::kDict;
      node.size = proto.dict().size();
      break;
    case v1::Node::kList:
      node.kind = NodeKind::kList;
      node.size = proto.list().size();
      break;
    case v1::Node::kTuple:
      node.kind = NodeKind::kTuple;
      node.size = proto.tuple().size();
      break;
    case v1::Node::kNone:
      node.kind = NodeKind::kNone;
      break;
    case v1::Node::kBoolValue:
      node.kind = NodeKind::kBool;
      node.bool_value = proto.bool_value();
      break;
    case v1::Node::kIntValue:
      node.kind = NodeKind::kInt;
      node.int_value = proto.int_value();
      break;
    case v1::Node::kFloatValue:
      node.kind = NodeKind::kFloat;
      node.float_value = proto.float_value();
      break;
    case v1::Node::kStringValue:
      node.kind = NodeKind::kString;
      node.string_value = proto.string_value();
      break;
    case v1::Node::kTensor: {
      const v1::TensorMeta& t = proto.tensor();
      node.kind = NodeKind::kTensor;
      if (t.dtype() <= 0 || t.dtype() > kMaxDType) {
        return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", t.dtype()));
      }
      node.tensor.dtype = static_cast<DType>(t.dtype());
      node.tensor.shape.assign(t.shape().begin(), t.shape().end());
      node.tensor.device = t.device().empty() ? "cpu" : t.device();
      node.tensor.requires_grad = t.requires_grad();
      if (t.has_stats()) node.tensor.stats = FromProto(t.stats());
      absl::Status s = DataFromProto(t.data(), &node.data);
      if (!s.ok()) return s;
      break;
    }
    case v1::Node::kBytes: {
      node.kind = NodeKind::kBytes;
      absl::Status s = DataFromProto(proto.bytes().data(), &node.data);
      if (!s.ok()) return s;
      break;
    }
    case v1::Node::VALUE_NOT_SET:
      return absl::InvalidArgumentError("node has no value");
  }
  return node;
}

void ToProto(const Node& node, v1::Node* proto) {
  if (auto* s = std::get_if<std::string>(&node.key)) proto->set_str_key(*s);
  if (auto* i = std::get_if<int64_t>(&node.key)) proto->set_int_key(*i);
  switch (node.kind) {
    case NodeKind::kDict:
      proto->mutable_dict()->set_size(node.size);
      break;
    case NodeKind::kList:
      proto->mutable_list()->set_size(node.size);
      break;
    case NodeKind::kTuple:
      proto->mutable_tuple()->set_size(node.size);
      break;
    case NodeKind::kNone:
      proto->mutable_none();
      break;
    case NodeKind::kBool:
      proto->set_bool_value(node.bool_value);
      break;
    case NodeKind::kInt:
      proto->set_int_value(node.int_value);
      break;
    case NodeKind::kFloat:
      proto->set_float_value(node.float_value);
      break;
    case NodeKind::kString:
      proto->set_string_value(node.string_value);
      break;
    case NodeKind::kTensor: {
      v1::TensorMeta* t = proto->mutable_tensor();
      t->set_dtype(static_cast<v1::DType>(node.tensor.dtype));
      for (int64_t d : node.tensor.shape) t->add_shape(d);
      t->set_device(node.tensor.device);
      t->set_requires_grad(node.tensor.requires_grad);
      if (node.tensor.stats) ToProto(*node.tensor.stats, t->mutable_stats());
      DataToProto(node.data, t->mutable_data());
      break;
    }
    case NodeKind::kBytes:
      DataToProto(node.data, proto->mutable_bytes()->mutable_data());
      break;
  }
}

VersionInfo FromProto(const v1::VersionInfo& proto) {
  VersionInfo info;
  info.name = proto.name();
  info.version = proto.version();
  info.create_time_ms = TimestampFromProto(proto.create_time());
  info.step = proto.step();
  info.epoch = proto.epoch();
  info.metadata.insert(proto.metadata().begin(), proto.metadata().end());
  info.tags.assign(proto.tags().begin(), proto.tags().end());
  info.num_tensors = proto.num_tensors();
  info.num_nodes = proto.num_nodes();
  info.data_bytes = proto.data_bytes();
  info.new_bytes = proto.new_bytes();
  info.world_size = proto.world_size();
  info.parent = proto.parent();
  return info;
}

void ToProto(const VersionInfo& info, v1::VersionInfo* proto) {
  proto->set_name(info.name);
  proto->set_version(info.version);
  TimestampToProto(info.create_time_ms, proto->mutable_create_time());
  proto->set_step(info.step);
  proto->set_epoch(info.epoch);
  proto->mutable_metadata()->insert(info.metadata.begin(), info.metadata.end());
  for (const auto& t : info.tags) proto->add_tags(t);
  proto->set_num_tensors(info.num_tensors);
  proto->set_num_nodes(info.num_nodes);
  proto->set_data_bytes(info.data_bytes);
  proto->set_new_bytes(info.new_bytes);
  proto->set_world_size(info.world_size);
  proto->set_parent(info.parent);
}

RetentionPolicy FromProto(const v1::RetentionPolicy& proto) {
  RetentionPolicy policy;
  policy.keep_last = proto.keep_last();
  policy.keep_every_steps = proto.keep_every_steps();
  policy.keep_best = proto.keep_best();
  policy.metric = proto.metric();
  policy.higher_is_better = proto.higher_is_better();
  return policy;
}

void ToProto(const RetentionPolicy& policy, v1::RetentionPolicy* proto) {
  proto->set_keep_last(policy.keep_last);
  proto->set_keep_every_steps(policy.keep_every_steps);
  proto->set_keep_best(policy.keep_best);
  proto->set_metric(policy.metric);
  proto->set_higher_is_better(policy.higher_is_better);
}

int64_t TimestampFromProto(const google::protobuf::Timestamp& proto) {
  return proto.seconds() * 1000 + proto.nanos() / 1000000;
}

void TimestampToProto(int64_t ms, google::protobuf::Timestamp* proto) {
  int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  proto->set_seconds(secs);
  proto->set_nanos(static_cast<int32_t>((ms - secs * 1000) * 1000000));
}

CheckpointSummary FromProto(const v1::CheckpointSummary& proto) {
  CheckpointSummary summary;
  summary.name = proto.name();
  summary.latest_version = proto.latest_version();
  summary.num_versions = proto.num_versions();
  summary.latest_create_time_ms = TimestampFromProto(proto.latest_create_time());
  return summary;
}

void ToProto(const CheckpointSummary& summary, v1::CheckpointSummary* proto) {
  proto->set_name(summary.name);
  proto->set_latest_version(summary.latest_version);
  proto->set_num_versions(summary.num_versions);
  TimestampToProto(summary.latest_create_time_ms, proto->mutable_latest_create_time());
}

TensorSlice FromProto(const v1::TensorSlice& proto) {
  return TensorSlice{proto.key(),
                     {proto.start().begin(), proto.start().end()},
                     {proto.length().begin(), proto.length().end()}};
}

void ToProto(const TensorSlice& slice, v1::TensorSlice* proto) {
  proto->set_key(slice.key);
  for (uint64_t a : slice.start) proto->add_start(a);
  for (uint64_t n : slice.length) proto->add_length(n);
}

StoreStats FromProto(const v1::StorageStats& proto) {
  StoreStats stats;
  stats.checkpoints = proto.checkpoints();
  stats.versions = proto.versions();
  stats.chunks = proto.chunks();
  stats.stored_bytes = proto.stored_bytes();
  stats.logical_bytes = proto.logical_bytes();
  stats.disk_bytes = proto.disk_bytes();
  stats.active_uploads = proto.active_uploads();
  stats.garbage_bytes = proto.garbage_bytes();
  return stats;
}

void ToProto(const StoreStats& stats, v1::StorageStats* proto) {
  proto->set_checkpoints(stats.checkpoints);
  proto->set_versions(stats.versions);
  proto->set_chunks(stats.chunks);
  proto->set_stored_bytes(stats.stored_bytes);
  proto->set_logical_bytes(stats.logical_bytes);
  proto->set_disk_bytes(stats.disk_bytes);
  proto->set_active_uploads(stats.active_uploads);
  proto->set_garbage_bytes(stats.garbage_bytes);
}

ServerInfo FromProto(const v1::GetServerInfoResponse& proto) {
  ServerInfo info;
  info.server_version = proto.server_version();
  info.chunk_size = proto.chunk_size();
  info.max_message_bytes = proto.max_message_bytes();
  info.stats = FromProto(proto.stats());
  info.dedup_ratio = proto.stats().dedup_ratio();
  return info;
}

void ToProto(const ServerInfo& info, v1::GetServerInfoResponse* proto) {
  proto->set_server_version(info.server_version);
  proto->set_chunk_size(info.chunk_size);
  proto->set_max_message_bytes(info.max_message_bytes);
  ToProto(info.stats, proto->mutable_stats());
  proto->mutable_stats()->set_dedup_ratio(info.dedup_ratio);
}

NamespaceUsage FromProto(const v1::GetUsageResponse& proto) {
  NamespaceUsage usage;
  usage.ns = proto.namespace_();
  usage.used_bytes = proto.used_bytes();
  usage.quota_bytes = proto.quota_bytes();
  return usage;
}

void ToProto(const NamespaceUsage& usage, v1::GetUsageResponse* proto) {
  proto->set_namespace_(usage.ns);
  proto->set_used_bytes(usage.used_bytes);
  proto->set_quota_bytes(usage.quota_bytes);
}

GcResult FromProto(const v1::GarbageCollectResponse& proto) {
  GcResult gc;
  gc.chunks_removed = proto.chunks_removed();
  gc.bytes_removed = proto.bytes_removed();
  gc.orphan_uploads_removed = proto.orphan_uploads_removed();
  return gc;
}

void ToProto(const GcResult& gc, v1::GarbageCollectResponse* proto) {
  proto->set_chunks_removed(gc.chunks_removed);
  proto->set_bytes_removed(gc.bytes_removed);
  proto->set_orphan_uploads_removed(gc.orphan_uploads_removed);
}

BackupInfo FromProto(const v1::BackupResponse& proto) {
  BackupInfo backup;
  backup.name = proto.name();
  backup.path = proto.path();
  backup.files = proto.files();
  backup.bytes = proto.bytes();
  backup.versions = proto.versions();
  return backup;
}

void ToProto(const BackupInfo& backup, v1::BackupResponse* proto) {
  proto->set_name(backup.name);
  proto->set_path(backup.path);
  proto->set_files(backup.files);
  proto->set_bytes(backup.bytes);
  proto->set_versions(backup.versions);
}

TensorStats FromProto(const v1::TensorStats& proto) {
  TensorStats stats;
  stats.count = proto.count();
  stats.min = proto.min();
  stats.max = proto.max();
  stats.mean = proto.mean();
  stats.std = proto.std();
  stats.l2 = proto.l2();
  stats.nan = proto.nan();
  stats.pos_inf = proto.pos_inf();
  stats.neg_inf = proto.neg_inf();
  return stats;
}

void ToProto(const TensorStats& stats, v1::TensorStats* proto) {
  proto->set_count(stats.count);
  proto->set_min(stats.min);
  proto->set_max(stats.max);
  proto->set_mean(stats.mean);
  proto->set_std(stats.std);
  proto->set_l2(stats.l2);
  proto->set_nan(stats.nan);
  proto->set_pos_inf(stats.pos_inf);
  proto->set_neg_inf(stats.neg_inf);
}

VersionDiff FromProto(const v1::DiffResponse& proto) {
  VersionDiff diff;
  diff.a = FromProto(proto.a());
  diff.b = FromProto(proto.b());
  for (const v1::TensorDiff& t : proto.tensors()) {
    TensorDiff out;
    out.key = t.key();
    out.change = static_cast<TensorChange>(t.change());
    out.dtype_a = static_cast<DType>(t.dtype_a());
    out.dtype_b = static_cast<DType>(t.dtype_b());
    out.shape_a.assign(t.shape_a().begin(), t.shape_a().end());
    out.shape_b.assign(t.shape_b().begin(), t.shape_b().end());
    out.rel_l2 = t.rel_l2();
    out.max_abs_diff = t.max_abs_diff();
    out.nonfinite_pairs = t.nonfinite_pairs();
    diff.tensors.push_back(std::move(out));
  }
  diff.identical = proto.identical();
  diff.changed = proto.changed();
  diff.meta_changed = proto.meta_changed();
  diff.only_in_a = proto.only_in_a();
  diff.only_in_b = proto.only_in_b();
  diff.truncated = proto.truncated();
  diff.bytes_compared = proto.bytes_compared();
  return diff;
}

void ToProto(const VersionDiff& diff, v1::DiffResponse* proto) {
  ToProto(diff.a, proto->mutable_a());
  ToProto(diff.b, proto->mutable_b());
  for (const TensorDiff& t : diff.tensors) {
    v1::TensorDiff* out = proto->add_tensors();
    out->set_key(t.key);
    out->set_change(static_cast<v1::TensorDiff::Change>(t.change));
    out->set_dtype_a(static_cast<v1::DType>(t.dtype_a));
    out->set_dtype_b(static_cast<v1::DType>(t.dtype_b));
    for (int64_t d : t.shape_a) out->add_shape_a(d);
    for (int64_t d : t.shape_b) out->add_shape_b(d);
    out->set_rel_l2(t.rel_l2);
    out->set_max_abs_diff(t.max_abs_diff);
    out->set_nonfinite_pairs(t.nonfinite_pairs);
  }
  proto->set_identical(diff.identical);
  proto->set_changed(diff.changed);
  proto->set_meta_changed(diff.meta_changed);
  proto->set_only_in_a(diff.only_in_a);
  proto->set_only_in_b(diff.only_in_b);
  proto->set_truncated(diff.truncated);
  proto->set_bytes_compared(diff.bytes_compared);
}

}  // namespace ckpt::rpc
