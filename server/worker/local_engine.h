// The engine that trains in this process on LibTorch (server/train): world
// size 1 jobs and sweeps on the daemon's worker threads, sweep planning, and
// the models Classify loads.
//
// Thread-safety: as jobs::Engine.
#ifndef TRAIND_SERVER_WORKER_LOCAL_ENGINE_H_
#define TRAIND_SERVER_WORKER_LOCAL_ENGINE_H_

#include <memory>

#include "server/jobs/engine.h"

namespace traind::worker {

std::unique_ptr<jobs::Engine> NewLocalEngine();

}  // namespace traind::worker

#endif  // TRAIND_SERVER_WORKER_LOCAL_ENGINE_H_
