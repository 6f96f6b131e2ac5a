// Who calls: every job belongs to the user who submitted it; another user's
// job does not exist for a caller (NOT_FOUND), except for admins.
#ifndef TRAIND_SERVER_JOBS_CALLER_H_
#define TRAIND_SERVER_JOBS_CALLER_H_

#include <string>

namespace traind::jobs {

struct Caller {
  std::string user = "local";  // the implicit user of a daemon without tokens
  bool admin = true;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_CALLER_H_
