# Sourced by bench/run.sh and bench/contention.sh: traind's allocator
# settings (server/train/allocator.cc) for PyTorch, the "tuned" reference.
TUNED_ENV=(MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_MMAP_THRESHOLD_=33554432
           MALLOC_TRIM_THRESHOLD_=1073741824)
