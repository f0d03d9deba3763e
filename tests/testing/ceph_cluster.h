#ifndef CKPT_TESTS_TESTING_CEPH_CLUSTER_H_
#define CKPT_TESTS_TESTING_CEPH_CLUSTER_H_

// A real Ceph cluster for the RADOS backend's tests: one monitor and three
// BlueStore OSDs on files, on 127.0.0.1, with a replicated pool "ckpt" and
// an erasure-coded one for chunks, "ckpt-data" (k=2, m=1), started by scripts/ceph-dev-cluster.sh
// in a temporary directory the first time a test asks for it, and stopped
// when the test process exits. Clusters left behind by a test process that
// was killed are stopped by the next one.

#include <string>

#include "absl/status/statusor.h"

namespace ckpt::testing {

/// The test cluster's erasure-coded pool, for RadosOptions::data_pool.
inline constexpr char kTestDataPool[] = "ckpt-data";

/// The ceph.conf of the test cluster (pools "ckpt", kTestDataPool; client.admin and
/// client.ckpt in its keyring), starting it on the first call; or
/// $CKPT_TEST_CEPH_CONF when set (a cluster run by someone else). The
/// script's output on failure.
absl::StatusOr<std::string> TestCephConf();

/// Starts a cluster of this test's own in `dir` (which must not exist;
/// scripts/ceph-dev-cluster.sh start DIR 1): its ceph.conf. For tests that
/// disturb the cluster (freeze or kill its daemons).
absl::StatusOr<std::string> StartOwnCephCluster(const std::string& dir);

/// Stops the cluster in `dir` and deletes `dir`.
void StopCephCluster(const std::string& dir);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_CEPH_CLUSTER_H_
