#ifndef CKPT_TESTS_TESTING_HTTP_H_
#define CKPT_TESTS_TESTING_HTTP_H_

// A minimal HTTP/1.0 GET for scraping the metrics endpoint in tests.

#include <string>

#include "absl/status/statusor.h"

namespace ckpt::testing {

/// GET http://127.0.0.1:PORT/PATH; the body of a 200 reply. Unavailable if
/// the connection fails, Internal for another status (its line).
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

/// The value of the Prometheus sample `series` (e.g.
/// `ckpt_requests_total{code="OK",method="Save"}`) in a scrape; -1 if absent.
double MetricValue(const std::string& scrape, const std::string& series);

/// MetricValue of `series` in a scrape of http://127.0.0.1:PORT/metrics; -1
/// if absent or the scrape failed.
double ScrapeMetric(int port, const std::string& series);

/// Polls ScrapeMetric until `series` is `value`, for at most `seconds`;
/// whether it got there.
bool WaitForMetric(int port, const std::string& series, double value, int seconds = 30);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_HTTP_H_
