"""A throwaway Slurm cluster for tests: munge, slurmctld and one slurmd per
node from Debian's packages, configured in a temp folder, on ports of its
own. Nodes are either the machine itself (loopback) or network namespaces
the caller made (slurmd is started there with nsenter, because
`ip netns exec` hides /sys/fs/cgroup). Everything started is stopped by PID.
"""
import os
import pwd
import shutil
import socket
import subprocess
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_reason():
    """Why a cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (munged runs as user munge, slurmd as root)"
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "nsenter"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (scripts/install-deps.sh --test installs it)"
    return None


class SlurmCluster:
    def __init__(self, root, nodes, ctld_addr="127.0.0.1"):
        """nodes: [(name, address, netns or None, cpus)]."""
        self.root, self.nodes, self.ctld_addr = root, nodes, ctld_addr
        self.procs = []
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def start(self):
        os.chmod(self.root, 0o755)
        munge = pwd.getpwnam("munge")
        mdir = os.path.join(self.root, "munge")
        os.makedirs(mdir)
        os.chown(mdir, munge.pw_uid, munge.pw_gid)
        os.chmod(mdir, 0o700)
        key = os.path.join(mdir, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        self.munge_socket = os.path.join(mdir, "munge.socket")
        self.procs.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", "munged", "--foreground", "--force",
             f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={mdir}/munged.pid", f"--log-file={mdir}/munged.log",
             f"--seed-file={mdir}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.wait_for(lambda: os.path.exists(self.munge_socket), "munged")
        # The socket must be reachable by root-run slurm daemons; its folder is munge's.
        ctld_port, slurmd_port = free_port(), free_port()
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=traindtest",
            f"SlurmctldHost={host}({self.ctld_addr})",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root}/state",
            f"SlurmdSpoolDir={self.root}/spool-%n",
            f"SlurmctldPidFile={self.root}/slurmctld.pid",
            f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root}/slurmctld.log",
            f"SlurmdLogFile={self.root}/slurmd-%n.log",
            "SlurmUser=root", "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "MpiDefault=none", "ReturnToService=2", "SlurmdParameters=config_overrides",
            "SchedulerParameters=defer_batch", "MinJobAge=600",
            "SlurmctldTimeout=10", "SlurmdTimeout=10", "InactiveLimit=0", "KillWait=2",
        ]
        for name, addr, _, cpus in self.nodes:
            port = slurmd_port if len(self.nodes) == 1 else free_port()
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr={addr} Port={port} "
                         f"CPUs={cpus} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.makedirs(os.path.join(self.root, "state"))
        self.procs.append(subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", self.conf], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name, _, netns, _ in self.nodes:
            os.makedirs(os.path.join(self.root, f"spool-{name}"))
            cmd = ["slurmd", "-D", "-N", name, "-f", self.conf]
            if netns:
                cmd = ["nsenter", f"--net=/run/netns/{netns}"] + cmd
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        self.wait_for(self.all_idle, "the nodes to be idle", timeout=60)
        return self

    def all_idle(self):
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env,
                           capture_output=True, text=True)
        states = dict(l.split() for l in p.stdout.splitlines() if l.strip())
        return len(states) == len(self.nodes) and all(s == "idle" for s in states.values())

    def wait_for(self, ready, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) before {what}: "
                                       f"{self.logs()}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}: {self.logs()}")

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".log"):
                with open(os.path.join(self.root, name), errors="replace") as f:
                    out.append(f"--- {name}\n" + f.read()[-3000:])
        return "\n".join(out)

    def scontrol(self, *args):
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True,
                              text=True).stdout

    def stop(self):
        ids = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run(["scancel", *ids], env=self.env, capture_output=True)
            time.sleep(1)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
