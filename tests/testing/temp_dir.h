#ifndef CKPT_TESTS_TESTING_TEMP_DIR_H_
#define CKPT_TESTS_TESTING_TEMP_DIR_H_

#include <string>

namespace ckpt::testing {

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents on
/// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_TEMP_DIR_H_
