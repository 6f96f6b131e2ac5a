// Which c10d backends this LibTorch can run, asked without LibTorch's
// headers: the daemon's wiring (server.cc) needs only the answer. Defined
// in collective.cc.
#ifndef TRAIND_SERVER_TRAIN_BACKEND_H_
#define TRAIND_SERVER_TRAIN_BACKEND_H_

#include <string>

namespace traind::train {

// Whether this LibTorch can run `backend` ("gloo", "nccl").
bool BackendAvailable(const std::string& backend);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_BACKEND_H_
