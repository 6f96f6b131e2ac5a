// Which threads run LibTorch's operators in parallel: job threads only.
//
// Debian's LibTorch runs intra-op parallelism on OpenMP, and libgomp gives
// every thread that starts a parallel region a pool of threads of its own,
// kept as long as that thread lives. Once the process holds more such
// threads than the machine has cores, libgomp stops spinning between
// parallel regions (its "throttled" wait) and every region of every running
// job pays a futex sleep and wake-up. One RPC that built a model on a gRPC
// thread (a fine-tune submission checks its weights file so) was enough: the
// jobs after it trained 10-15 % slower, with 18,000 context switches in 5 s
// of training instead of 400.
//
// So threads run LibTorch serially unless they ask: a job's thread asks for
// its spec's thread count; RPC handlers, the HTTP server and the decoders
// stay serial.
//
// Thread-safety: both functions may be called from any thread.
#ifndef TRAIND_SERVER_TRAIN_INTRA_OP_H_
#define TRAIND_SERVER_TRAIN_INTRA_OP_H_

namespace traind::train {

// At process start, before any tensor work: threads that do not call
// UseIntraOpThreads run LibTorch's operators on themselves alone.
void SerialIntraOpByDefault();

// This thread's LibTorch operators run on `threads` threads (itself
// included); other threads keep theirs.
void UseIntraOpThreads(int threads);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_INTRA_OP_H_
