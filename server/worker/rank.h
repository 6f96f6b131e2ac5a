// `traind worker`: one rank of a distributed job. It reads its place from
// the launcher's environment (torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT; else Slurm's SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID; else Kubernetes' JOB_COMPLETION_INDEX), and the control
// link from TRAIND_CONTROL, TRAIND_ATTEMPT, TRAIND_ATTEMPT_SECRET (and
// TRAIND_CONTROL_CA for TLS); TRAIND_RANK_ADDR is the address its peers
// reach it at (default: this host's address on its route to MASTER_ADDR).
#ifndef TRAIND_SERVER_WORKER_RANK_H_
#define TRAIND_SERVER_WORKER_RANK_H_

namespace traind::worker {

// The process's exit code: 0 when the rank's run ended as the job asked
// (finished or cancelled), 1 when it failed, 2 for a bad environment.
int RunWorker();

}  // namespace traind::worker

#endif  // TRAIND_SERVER_WORKER_RANK_H_
