// `ckpt import FILE NAME` and `ckpt export NAME[@VERSION|@TAG] FILE`: PyTorch
// checkpoints (torch.save's zip format) and safetensors files, through the
// interop library (no LibTorch, no pickle code executed).
//
// Import maps the file and hands RawClient::Save spans into the mapping, so
// memory holds page cache rather than a copy. Export streams the load into a
// writer that pwrites each piece at its place in the output file and writes
// headers last; the file appears under its name only when complete.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "common/select.h"
#include "common/status_macros.h"
#include "interop/checkpoint.h"
#include "interop/file_io.h"

namespace ckpt::cli {
namespace {

// Version metadata keys that import sets, and the prefix under which a
// safetensors file's __metadata__ is kept (export writes those back).
constexpr char kSourceFileKey[] = "source_file";
constexpr char kSourceFormatKey[] = "source_format";
constexpr char kSafetensorsPrefix[] = "safetensors.";

// Transfers at least this large get a progress bar when stderr is a terminal.
constexpr uint64_t kProgressMinBytes = 64ull << 20;

// A one-line progress bar on stderr, redrawn at most every 100 ms:
//   import  [##########----------]  50%  1.0 GiB / 2.0 GiB  412.3 MiB/s
class ProgressBar {
 public:
  ProgressBar(std::ostream& err, std::string label, bool enabled)
      : err_(err), label_(std::move(label)), enabled_(enabled) {}

  void Start(uint64_t total) {
    total_ = total;
    start_ = last_ = std::chrono::steady_clock::now();
  }
  void Update(uint64_t done) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && drawn_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    Draw(done, now);
  }
  // Draws 100 % and ends the line (if anything was drawn or forced on).
  void Finish() {
    if (!enabled_) return;
    Draw(total_, std::chrono::steady_clock::now());
    err_ << "\n" << std::flush;
  }

 private:
  void Draw(uint64_t done, std::chrono::steady_clock::time_point now) {
    constexpr int kWidth = 20;
    const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done) / total_;
    const int filled = static_cast<int>(fraction * kWidth);
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const uint64_t rate = seconds > 0 ? static_cast<uint64_t>(done / seconds) : 0;
    err_ << "\r" << label_ << "  [" << std::string(filled, '#') << std::string(kWidth - filled, '-')
         << "]  " << absl::StrFormat("%3d%%", static_cast<int>(fraction * 100)) << "  "
         << HumanBytes(done) << " / " << HumanBytes(total_) << "  " << HumanBytes(rate) << "/s"
         << std::flush;
    drawn_ = true;
  }

  std::ostream& err_;
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  uint64_t total_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

// --progress / --no-progress / default (a terminal and a large transfer).
bool ProgressWanted(int flag, uint64_t total) {
  if (flag != 0) return flag > 0;
  return isatty(STDERR_FILENO) && total >= kProgressMinBytes;
}

absl::StatusOr<interop::Format> ParseFormat(const std::string& text) {
  if (text == "pt") return interop::Format::kPt;
  if (text == "safetensors") return interop::Format::kSafetensors;
  if (text == "auto") return interop::Format::kUnknown;
  return absl::InvalidArgumentError(
      absl::StrCat("--format must be pt, safetensors or auto, not '", Printable(text), "'"));
}

std::string BaseName(const std::string& path) { return path.substr(path.rfind('/') + 1); }

uint64_t CountTensors(const Tree& tree) {
  uint64_t n = 0;
  for (const Node& node : tree) n += node.kind == NodeKind::kTensor;
  return n;
}

// ---------------------------------------------------------------- import

struct ImportArgs {
  std::string file;
  std::string name;
  std::string format = "auto";
  std::vector<std::string> keys;
  std::vector<std::string> tags;
  std::vector<std::string> metadata;
  int64_t step = 0;
  int64_t epoch = 0;
  int progress = 0;  // 1 --progress, -1 --no-progress
  bool reject_nonfinite = false;
  std::string parent;
};

absl::Status RunImport(Context& ctx, const ImportArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(interop::Format wanted, ParseFormat(args.format));
  std::map<std::string, std::string> user_metadata;
  CKPT_RETURN_IF_ERROR(AddMetadata(args.metadata, &user_metadata));
  CKPT_ASSIGN_OR_RETURN(auto file, interop::MappedFile::Open(args.file));
  auto detected = interop::DetectFormat(file->bytes());
  if (!detected.ok()) return Annotate(detected.status(), args.file);
  if (wanted != interop::Format::kUnknown && wanted != *detected) {
    return absl::InvalidArgumentError(absl::StrCat(
        args.file, " is a ", interop::FormatName(*detected), " file, not ", args.format));
  }
  // Memory stays bounded: pages the reader (CRC checks) and the save (after
  // each batch) are done with are dropped from this process.
  interop::ReadOptions read_options;
  read_options.done_with = [&file](absl::Span<const uint8_t> range) { file->DropPages(range); };
  auto imported = interop::ReadCheckpoint(file->bytes(), read_options);
  if (!imported.ok()) return Annotate(imported.status(), args.file);

  client::SaveInput input;
  if (args.keys.empty()) {
    input.tree = std::move(imported->tree);
    input.bytes = std::move(imported->bytes);
  } else {
    CKPT_ASSIGN_OR_RETURN(std::vector<KeyPattern> patterns, CompilePatterns(args.keys));
    auto selection = SelectTree(imported->tree, patterns);
    if (!selection.ok()) return Annotate(selection.status(), args.file);
    input.tree = std::move(selection->tree);
    for (size_t source : selection->source) input.bytes.push_back(imported->bytes[source]);
  }
  uint64_t total = 0;
  for (const Node& n : input.tree) total += n.has_data() ? n.data.size : 0;

  client::SaveOptions options;
  options.tags = args.tags;
  options.reject_nonfinite = args.reject_nonfinite;
  options.parent = args.parent;
  options.step = args.step;
  options.epoch = args.epoch;
  options.metadata[kSourceFileKey] = BaseName(args.file);
  options.metadata[kSourceFormatKey] = std::string(interop::FormatName(imported->format));
  for (const auto& [k, v] : imported->metadata) options.metadata[kSafetensorsPrefix + k] = v;
  for (auto& [key, value] : user_metadata) options.metadata[key] = std::move(value);
  ProgressBar bar(ctx.err(), "import", ProgressWanted(args.progress, total));
  bar.Start(total);
  options.progress = [&bar, &file](uint64_t done, uint64_t) {
    file->DropPages(file->bytes());
    bar.Update(done);
  };

  CKPT_ASSIGN_OR_RETURN(client::RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(client::SaveResult saved, client->Save(args.name, input, options));
  bar.Finish();
  ctx.out() << "imported " << args.file << " as " << args.name << "@" << saved.version.version
            << " (" << interop::FormatName(imported->format) << ", " << CountTensors(input.tree)
            << " tensors, " << HumanBytes(total) << ", sent " << HumanBytes(saved.bytes_sent)
            << ")\n";
  PrintPruned(ctx.out(), args.name, saved);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- export

struct ExportArgs {
  std::string ref;
  std::string file;
  std::string format = "auto";
  std::vector<std::string> keys;
  int progress = 0;
};

// Streams a load into a checkpoint writer.
class ExportSink : public client::LoadSink {
 public:
  ExportSink(std::string path, interop::Format format, std::ostream& err, int progress)
      : path_(std::move(path)), format_(format), err_(err), progress_(progress) {}

  absl::Status OnTree(const VersionInfo& version, const Tree& tree) override {
    version_ = version;
    tree_ = tree;
    interop::WriteOptions options;
    for (const auto& [k, v] : version.metadata) {
      if (absl::StartsWith(k, kSafetensorsPrefix)) {
        options.metadata[k.substr(sizeof(kSafetensorsPrefix) - 1)] = v;
      }
    }
    CKPT_ASSIGN_OR_RETURN(out_, interop::AtomicFileOutput::Create(path_));
    auto writer = interop::NewCheckpointWriter(format_, tree_, out_.get(), options);
    if (!writer.ok()) {
      return Annotate(writer.status(),
                      absl::StrCat("cannot export ", version.name, "@", version.version, " as ",
                                   interop::FormatName(format_)));
    }
    writer_ = *std::move(writer);
    for (const Node& n : tree_) total_ += n.has_data() ? n.data.size : 0;
    bar_ = std::make_unique<ProgressBar>(err_, "export", ProgressWanted(progress_, total_));
    bar_->Start(total_);
    return absl::OkStatus();
  }

  absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override {
    CKPT_RETURN_IF_ERROR(writer_->Write(node, offset, bytes));
    done_ += bytes.size();
    bar_->Update(done_);
    return absl::OkStatus();
  }

  // After a successful load: headers, directory, rename into place.
  absl::Status Finish() {
    CKPT_RETURN_IF_ERROR(writer_->Finish());
    CKPT_RETURN_IF_ERROR(out_->Commit());
    bar_->Finish();
    return absl::OkStatus();
  }

  const VersionInfo& version() const { return version_; }
  const Tree& tree() const { return tree_; }
  uint64_t total() const { return total_; }

 private:
  std::string path_;
  interop::Format format_;
  std::ostream& err_;
  int progress_;
  std::unique_ptr<ProgressBar> bar_;
  VersionInfo version_;
  Tree tree_;
  std::unique_ptr<interop::AtomicFileOutput> out_;
  std::unique_ptr<interop::CheckpointWriter> writer_;
  uint64_t total_ = 0;
  uint64_t done_ = 0;
};

absl::Status RunExport(Context& ctx, const ExportArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_ASSIGN_OR_RETURN(interop::Format format, ParseFormat(args.format));
  if (format == interop::Format::kUnknown) {
    format = interop::FormatFromFileName(args.file);
    if (format == interop::Format::kUnknown) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot tell the format from the name '", Printable(args.file),
          "' (.pt, .pth, .bin, .ckpt, .tar or .safetensors); pass --format pt|safetensors"));
    }
  }
  client::LoadOptions options;
  options.version = ref.version;
  options.tag = ref.tag;
  options.patterns = args.keys;
  ExportSink sink(args.file, format, ctx.err(), args.progress);
  CKPT_ASSIGN_OR_RETURN(client::RawClient * client, ctx.Client());
  CKPT_RETURN_IF_ERROR(client->Load(ref.name, options, &sink));
  CKPT_RETURN_IF_ERROR(sink.Finish());
  ctx.out() << "exported " << sink.version().name << "@" << sink.version().version << " to "
            << args.file << " (" << interop::FormatName(format) << ", " << CountTensors(sink.tree())
            << " tensors, " << HumanBytes(sink.total()) << ")\n";
  return absl::OkStatus();
}

}  // namespace

void AddInteropCommands(CLI::App& app, CommandTable& table) {
  auto imp = std::make_shared<ImportArgs>();
  CLI::App* sub = app.add_subcommand(
      "import",
      "Save a PyTorch .pt (torch.save) or .safetensors file as a new version of NAME "
      "(format from the content; no pickle code is run)");
  sub->add_option("FILE", imp->file, "file to import")->required();
  sub->add_option("NAME", imp->name, "checkpoint name")->required();
  sub->add_option("--keys", imp->keys,
                  "import only keys matching this glob (repeatable; '*' spans '/')");
  sub->add_option("--format", imp->format, "pt, safetensors or auto (default: auto)");
  sub->add_option("--tag", imp->tags, "tag to point at the new version (repeatable)");
  sub->add_option("--step", imp->step, "training step to record");
  sub->add_option("--epoch", imp->epoch, "epoch to record");
  sub->add_option("--metadata", imp->metadata,
                  "KEY=VALUE to record in the version's metadata (repeatable; e.g. loss=0.25 "
                  "for retention by --metric loss)")
      ->type_name("KEY=VALUE");
  sub->add_option("--parent", imp->parent,
                  "NAME@VERSION the imported version was trained from (lineage: ckpt log)");
  sub->add_flag("--reject-nonfinite", imp->reject_nonfinite,
                "refuse to save if a tensor holds NaN or infinities (nothing is saved; the "
                "error names the tensors)");
  sub->add_flag_function(
      "--progress", [imp](int64_t) { imp->progress = 1; }, "always show a progress bar on stderr");
  sub->add_flag_function(
      "--no-progress", [imp](int64_t) { imp->progress = -1; },
      "never show a progress bar (default: on a terminal, from 64 MiB)");
  table.Add(sub, [imp](Context& ctx) { return RunImport(ctx, *imp); });

  auto exp = std::make_shared<ExportArgs>();
  sub = app.add_subcommand(
      "export",
      "Write a version as a .pt file for torch.load, or as .safetensors (tensors only, "
      "nested keys joined with '/')");
  sub->add_option("REF", exp->ref, "NAME[@VERSION|@TAG]")->required();
  sub->add_option("FILE", exp->file,
                  "file to write (.pt, .pth, .bin, .ckpt, .tar: pt; .safetensors)")
      ->required();
  sub->add_option("--keys", exp->keys, "export only keys matching this glob (repeatable)");
  sub->add_option("--format", exp->format,
                  "pt, safetensors or auto (default: auto, from FILE's extension)");
  sub->add_flag_function(
      "--progress", [exp](int64_t) { exp->progress = 1; }, "always show a progress bar on stderr");
  sub->add_flag_function(
      "--no-progress", [exp](int64_t) { exp->progress = -1; },
      "never show a progress bar (default: on a terminal, from 64 MiB)");
  table.Add(sub, [exp](Context& ctx) { return RunExport(ctx, *exp); });
}

}  // namespace ckpt::cli
