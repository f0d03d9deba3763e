// `ckpt put` and `ckpt get`: store any file as a raw byte leaf (a tokenizer,
// a config, a TorchScript archive, a .pt file kept opaque) and fetch it, or
// one tensor's raw bytes, back. The file is memory-mapped and the download
// written piece by piece, so memory does not grow with the file.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "interop/file_io.h"

namespace ckpt::cli {
namespace {

absl::Status Errno(const std::string& what) { return ErrnoStatus(errno, what); }

using interop::MappedFile;

struct PutArgs {
  std::string name;
  std::string file;
  std::vector<std::string> tags;
  std::vector<std::string> metadata;
  int64_t step = 0;
};

absl::Status RunPut(Context& ctx, const PutArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  // A bad --metadata is a usage error before the file is even opened.
  std::map<std::string, std::string> user_metadata;
  CKPT_RETURN_IF_ERROR(AddMetadata(args.metadata, &user_metadata));
  CKPT_ASSIGN_OR_RETURN(auto file, MappedFile::Open(args.file));
  client::SaveInput input;
  Node root;
  root.kind = NodeKind::kBytes;
  root.data.size = file->bytes().size();
  input.tree.push_back(root);
  input.bytes.push_back(file->bytes());
  client::SaveOptions options;
  options.tags = args.tags;
  options.step = args.step;
  options.metadata["source_file"] = args.file.substr(args.file.rfind('/') + 1);
  for (auto& [key, value] : user_metadata) options.metadata[key] = std::move(value);
  CKPT_ASSIGN_OR_RETURN(client::RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(client::SaveResult saved, client->Save(args.name, input, options));
  ctx.out() << "saved " << args.name << "@" << saved.version.version << " ("
            << HumanBytes(root.data.size) << ", sent " << HumanBytes(saved.bytes_sent) << ")\n";
  PrintPruned(ctx.out(), args.name, saved);
  return absl::OkStatus();
}

struct GetArgs {
  std::string ref;
  std::string file;
  std::string key;
};

// Writes the one data leaf the load selects into a file.
class FileSink : public client::LoadSink {
 public:
  FileSink(std::string path, std::string key) : path_(std::move(path)), key_(std::move(key)) {}
  ~FileSink() override {
    if (fd_ >= 0) close(fd_);
  }

  absl::Status OnTree(const VersionInfo& version, const Tree& tree) override {
    std::vector<std::string> keys = FlattenedKeys(tree);
    for (size_t i = 0; i < tree.size(); ++i) {
      if (tree[i].has_data() && keys[i] == key_) node_ = i;
    }
    if (node_ == SIZE_MAX && key_.empty()) {
      // The user asked for the wrong thing, not for something missing.
      return absl::InvalidArgumentError(absl::StrCat(
          version.name, "@", version.version, " is a tree of ", tree.size(),
          " nodes, not one file: pass --key KEY for one tensor's or bytes leaf's raw bytes (`ckpt "
          "show ",
          version.name, "@", version.version, "` lists the keys), or use `ckpt export`"));
    }
    if (node_ == SIZE_MAX) {
      return absl::NotFoundError(absl::StrCat("no tensor or bytes leaf '", key_, "' in ",
                                              version.name, "@", version.version));
    }
    fd_ = open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) return Errno("cannot create " + path_);
    size_ = tree[node_].data.size;
    return absl::OkStatus();
  }

  absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override {
    if (node != node_) return absl::OkStatus();
    if (pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset)) !=
        static_cast<ssize_t>(bytes.size())) {
      return Errno("writing " + path_);
    }
    return absl::OkStatus();
  }

  uint64_t size() const { return size_; }

 private:
  std::string path_;
  std::string key_;
  size_t node_ = SIZE_MAX;
  uint64_t size_ = 0;
  int fd_ = -1;
};

absl::Status RunGet(Context& ctx, const GetArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  client::LoadOptions options;
  options.version = ref.version;
  options.tag = ref.tag;
  if (!args.key.empty()) {
    options.patterns = {EscapeGlob(args.key)};  // the key is literal
  }
  FileSink sink(args.file, args.key);
  CKPT_ASSIGN_OR_RETURN(client::RawClient * client, ctx.Client());
  absl::Status status = client->Load(ref.name, options, &sink);
  if (!status.ok()) {
    unlink(args.file.c_str());
    return status;
  }
  ctx.out() << "wrote " << args.file << " (" << HumanBytes(sink.size()) << ")\n";
  return absl::OkStatus();
}

}  // namespace

void AddFileCommands(CLI::App& app, CommandTable& table) {
  auto put = std::make_shared<PutArgs>();
  CLI::App* sub =
      app.add_subcommand("put", "Save a file as a new version of NAME (a raw byte leaf)");
  sub->add_option("NAME", put->name, "checkpoint name")->required();
  sub->add_option("FILE", put->file, "file to store")->required();
  sub->add_option("--tag", put->tags, "tag to point at the new version (repeatable)");
  sub->add_option("--step", put->step, "training step to record");
  sub->add_option("--metadata", put->metadata,
                  "KEY=VALUE to record in the version's metadata (repeatable; e.g. loss=0.25 "
                  "for retention by --metric loss)")
      ->type_name("KEY=VALUE");
  table.Add(sub, [put](Context& ctx) { return RunPut(ctx, *put); });

  auto get = std::make_shared<GetArgs>();
  sub = app.add_subcommand(
      "get", "Write a byte leaf (or, with --key, one tensor's raw bytes) of a version to FILE");
  sub->add_option("REF", get->ref, "NAME[@VERSION|@TAG]")->required();
  sub->add_option("FILE", get->file, "file to write")->required();
  sub->add_option("--key", get->key, "flattened key of the leaf (default: the root)");
  table.Add(sub, [get](Context& ctx) { return RunGet(ctx, *get); });
}

}  // namespace ckpt::cli
