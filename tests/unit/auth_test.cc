// The tokens file, rights and prefix rules of server/auth.h, and the log
// line format of server/telemetry.h.

#include "server/auth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "server/telemetry.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kReader[] = "reader-token-0123456789";
constexpr char kWriter[] = "writer-token-0123456789";
constexpr char kOps[] = "ops-token-0123456789abcdef";

// Listed in the table by its SHA-256 only.
constexpr char kHashed[] = "hashed-token-0123456789";

std::string TableText() {
  return std::string("# comment line\n") + "reader  " + kReader + "  read   team-a/,shared\n" +
         "writer  " + kWriter + "  write  team-a   # trailing comment\n" + "writer  " + kWriter +
         "  read   team-b/run-1\n" +
         "\n"
         "ops     " +
         kOps + "  admin  *\n" +
         // printf hashed-token-0123456789 | sha256sum
         "hashed  sha256:b22fd458dbe2426bebe59cfafe4c46e013df3efd439e4d91cda767ac3052ddd0  read  "
         "x\n";
}

std::shared_ptr<const TokenTable> Table() {
  auto table = TokenTable::Parse(TableText());
  EXPECT_TRUE(table.ok()) << table.status();
  return table.ok() ? *table : nullptr;
}

TEST(PrefixCoversTest, WholeSegmentsOnly) {
  EXPECT_TRUE(PrefixCovers("team", "team"));
  EXPECT_TRUE(PrefixCovers("team", "team/run-1/model"));
  EXPECT_FALSE(PrefixCovers("team", "teamX/model"));
  EXPECT_TRUE(PrefixCovers("team/run-1", "team/run-1/model"));
  EXPECT_FALSE(PrefixCovers("team/run-1", "team/run-10"));
  EXPECT_FALSE(PrefixCovers("team/run-1", "team"));
  EXPECT_TRUE(PrefixCovers("*", "anything/at/all"));
}

TEST(TokenTableTest, FindsEachTokenAndMergesLinesOfOneToken) {
  auto table = Table();
  ASSERT_NE(table, nullptr);
  EXPECT_EQ(table->size(), 4u);
  const Principal* reader = table->Find(kReader);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->name(), "reader");
  ASSERT_EQ(reader->grants().size(), 2u);
  EXPECT_EQ(reader->grants()[0].prefix, "team-a");  // trailing "/" dropped
  EXPECT_EQ(reader->grants()[1].prefix, "shared");
  const Principal* writer = table->Find(kWriter);
  ASSERT_NE(writer, nullptr);
  EXPECT_EQ(writer->grants().size(), 2u);
  EXPECT_EQ(table->Find("no-such-token-0123456789"), nullptr);
  EXPECT_EQ(table->Find(""), nullptr);
  // A prefix of a real token is not that token.
  EXPECT_EQ(table->Find(std::string(kReader).substr(0, 10)), nullptr);
}

TEST(TokenTableTest, Sha256Entries) {
  auto table = Table();
  ASSERT_NE(table, nullptr);
  const Principal* hashed = table->Find(kHashed);
  ASSERT_NE(hashed, nullptr) << "sha256 of '" << kHashed << "' does not match the table";
  EXPECT_EQ(hashed->name(), "hashed");
}

TEST(TokenTableTest, RightsIncludeLowerOnesOnCoveredNames) {
  auto table = Table();
  ASSERT_NE(table, nullptr);
  const Principal& reader = *table->Find(kReader);
  const Principal& writer = *table->Find(kWriter);
  const Principal& ops = *table->Find(kOps);

  EXPECT_TRUE(reader.Check(Right::kRead, "team-a/run/model").ok());
  EXPECT_TRUE(reader.Check(Right::kRead, "shared").ok());
  absl::Status denied = reader.Check(Right::kWrite, "team-a/run/model");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(), "token 'reader' has no write right on 'team-a/run/model'");
  EXPECT_EQ(reader.Check(Right::kRead, "team-b/x").code(), absl::StatusCode::kPermissionDenied);

  EXPECT_TRUE(writer.Check(Right::kWrite, "team-a/m").ok());
  EXPECT_TRUE(writer.Check(Right::kRead, "team-a/m").ok());  // write includes read
  EXPECT_EQ(writer.Check(Right::kAdmin, "team-a/m").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(writer.Check(Right::kRead, "team-b/run-1/m").ok());
  EXPECT_EQ(writer.Check(Right::kWrite, "team-b/run-1/m").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(writer.Check(Right::kRead, "team-b/run-10").code(),
            absl::StatusCode::kPermissionDenied);

  EXPECT_TRUE(ops.Check(Right::kAdmin, "any/name").ok());
  EXPECT_TRUE(ops.CheckGlobal(Right::kAdmin, "collect garbage").ok());
  absl::Status global = writer.CheckGlobal(Right::kAdmin, "collect garbage");
  EXPECT_EQ(global.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(global.message(), "token 'writer' may not collect garbage: that needs admin on '*'");
}

TEST(TokenTableTest, ReadableUnderAPrefix) {
  auto table = Table();
  ASSERT_NE(table, nullptr);
  const Principal& reader = *table->Find(kReader);
  const Principal& writer = *table->Find(kWriter);
  // Everything under the prefix is readable: no filtering.
  EXPECT_FALSE(reader.ReadableUnder("team-a/").has_value());
  EXPECT_FALSE(reader.ReadableUnder("team-a/run").has_value());
  EXPECT_FALSE(table->Find(kOps)->ReadableUnder("").has_value());
  // Otherwise the grants inside the prefix.
  EXPECT_THAT(*reader.ReadableUnder(""), ElementsAre("shared", "team-a"));
  EXPECT_THAT(*reader.ReadableUnder("team"), ElementsAre("team-a"));
  EXPECT_THAT(*reader.ReadableUnder("team-a"), ElementsAre("team-a"));  // not "team-aX"
  EXPECT_THAT(*writer.ReadableUnder("team-b/"), ElementsAre("team-b/run-1"));
  EXPECT_THAT(*reader.ReadableUnder("other/"), IsEmpty());
}

TEST(TokenTableTest, ErrorsNameTheLineAndNeverTheToken) {
  struct Case {
    std::string text;
    std::string message;
  };
  const std::string secret = "s3cret-token-never-shown";
  const Case cases[] = {
      {"a " + secret + " read\n",
       "tokens file line 1: expected 4 fields (NAME TOKEN RIGHT PREFIXES), found 3"},
      {"# c\nn short read x\n", "tokens file line 2: token of 'n' is shorter than 16 characters"},
      {"n " + secret + " owner x\n",
       "tokens file line 1: RIGHT must be read, write or admin, not 'owner'"},
      {"n " + secret + " read bad//name\n",
       "tokens file line 1: prefix 'bad//name' is neither '*' nor a checkpoint name: "},
      {"n " + secret + " read ,\n", "tokens file line 1: no prefix"},
      {"n!x " + secret + " read x\n",
       "tokens file line 1: NAME must be 1 to 64 characters of [A-Za-z0-9._@-]"},
      {"n sha256:abcd read x\n", "tokens file line 1: sha256: token needs 64 hex digits"},
      {"a " + secret + " read x\nb " + secret + " read y\n",
       "tokens file line 2: the token of 'b' is already the token of 'a'"},
      {"# nothing\n\n", "tokens file defines no token"},
  };
  for (const Case& c : cases) {
    auto table = TokenTable::Parse(c.text);
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(table.status().message()), HasSubstr(c.message)) << c.text;
    EXPECT_THAT(std::string(table.status().message()), Not(HasSubstr(secret)));
  }
}

TEST(AuthenticatorTest, BearerTokens) {
  Authenticator auth(Table());
  EXPECT_FALSE(auth.development_mode());
  auto ok = auth.Authenticate({std::string("Bearer ") + kWriter});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->name(), "writer");
  // The scheme is case-insensitive.
  EXPECT_TRUE(auth.Authenticate({std::string("bearer ") + kWriter}).ok());

  struct Case {
    std::vector<std::string> values;
    std::string message;
  };
  const Case cases[] = {
      {{}, "missing bearer token: send the metadata 'authorization: Bearer <token>'"},
      {{kWriter}, "malformed authorization metadata: expected 'Bearer <token>'"},
      {{std::string("Basic ") + kWriter},
       "malformed authorization metadata: expected 'Bearer <token>'"},
      {{"Bearer wrong-token-0123456789"}, "invalid token"},
      {{"Bearer "}, "invalid token"},
      {{std::string("Bearer ") + kWriter, std::string("Bearer ") + kOps},
       "more than one authorization metadata value"},
  };
  for (const Case& c : cases) {
    std::vector<absl::string_view> views(c.values.begin(), c.values.end());
    auto result = auth.Authenticate(views);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(result.status().message(), c.message);
  }
}

TEST(AuthenticatorTest, DevelopmentModeLetsEveryoneDoEverything) {
  Authenticator auth;
  EXPECT_TRUE(auth.development_mode());
  auto anyone = auth.Authenticate({});
  ASSERT_TRUE(anyone.ok());
  EXPECT_EQ((*anyone)->name(), "anonymous");
  EXPECT_TRUE((*anyone)->CheckGlobal(Right::kAdmin, "collect garbage").ok());
  EXPECT_EQ(auth.Reload().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(AuthenticatorTest, ReloadSwapsTheTableAndKeepsItOnError) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/tokens";
  std::ofstream(path) << "old " << kReader << " read a\n";
  auto auth = Authenticator::FromFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  auto before = (*auth)->Authenticate({std::string("Bearer ") + kReader});
  ASSERT_TRUE(before.ok());

  std::ofstream(path) << "new " << kWriter << " write a\n";
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_EQ((*auth)->Authenticate({std::string("Bearer ") + kReader}).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE((*auth)->Authenticate({std::string("Bearer ") + kWriter}).ok());
  // A principal handed out before the reload stays valid.
  EXPECT_EQ((*before)->name(), "old");

  std::ofstream(path) << "broken line\n";
  EXPECT_EQ((*auth)->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*auth)->Authenticate({std::string("Bearer ") + kWriter}).ok());

  EXPECT_EQ(Authenticator::FromFile(dir.path() + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(LoggerTest, LogfmtQuoting) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "rpc",
                           {{"method", "Save"},
                            {"checkpoint", "team/run-1"},
                            {"version", ""},
                            {"error", "no checkpoint 'a b' = \"x\"\n"}}),
            "level=info msg=rpc method=Save checkpoint=team/run-1 version=\"\" "
            "error=\"no checkpoint 'a b' = \\\"x\\\"\\n\"");
  EXPECT_EQ(ParseLogLevel("warn").value(), LogLevel::kWarn);
  EXPECT_EQ(ParseLogLevel("verbose").status().code(), absl::StatusCode::kInvalidArgument);
  Logger warn(LogLevel::kWarn);
  EXPECT_FALSE(warn.Enabled(LogLevel::kInfo));
  EXPECT_TRUE(warn.Enabled(LogLevel::kError));
  EXPECT_FALSE(Logger(LogLevel::kOff).Enabled(LogLevel::kError));
}

}  // namespace
}  // namespace ckpt::server
