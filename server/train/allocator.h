// Process-wide allocator settings for training. Torch-free so that main()
// can call it before anything allocates.
#ifndef TRAIND_SERVER_TRAIN_ALLOCATOR_H_
#define TRAIND_SERVER_TRAIN_ALLOCATOR_H_

namespace traind::train {

// Keeps large activation buffers mapped between steps instead of returning
// them to the OS after every step and page-faulting them back in (2-3x faster
// training with glibc, see ../shared/PERF.md). Call once at start-up, before
// the first tensor.
void TuneAllocator();

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_ALLOCATOR_H_
