"""A throw-away one-node SLURM cluster on this machine, for tests (Debian slurm-wlm 22.05 + munge).

`SlurmCluster(root).start()` writes slurm.conf and gres.conf into `root`, points
/etc/slurm/slurm.conf at them (the executor plugin's job step drops SLURM_CONF from the nested
srun's environment, so the configuration must be found at the default path), then starts munged
(as user munge), slurmctld and slurmd in the foreground as child processes. `stop()` cancels the
remaining jobs and ends exactly those processes by PID, then removes the symlink. Every file the
cluster writes (state, spool, logs, PID files) lives under `root`, except munged's seed and log
(a /tmp/diffrep-munge-* folder that user munge can reach, removed by `stop()`).

The node is the machine itself: its hostname, 2 CPUs, a declared (not real) memory of 128 GB and
a GRES `gpu` of N_GPUS devices backed by /dev/null and /dev/zero (slurm 22.05 needs one File= per
GPU and counts 0 GPUs without; no device is opened, the scheduler only counts them), so that
`--gpus=N` requests are scheduled and the job sees CUDA_VISIBLE_DEVICES / SLURM_GPUS_ON_NODE.

Needs root and the packages slurm-wlm, slurm-client and munge (.ci/setup-system installs them).
Only one such cluster can run on a machine at a time (fixed ports, one /etc/slurm/slurm.conf):
`start()` holds an exclusive lock on LOCK_FILE until `stop()`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ETC_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# diffrep test cluster"
LOCK_FILE = Path("/tmp/diffrep-slurm-cluster.lock")
PID_FILE = Path("/tmp/diffrep-slurm-cluster.pids")  # "pid cmdline" of the daemons started here
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
N_CPUS = 2
N_GPUS = 2
FAKE_GPU_DEVICES = ("/dev/null", "/dev/zero")  # slurm needs one File per GPU; any device file does
# Declared, not real: with SlurmdParameters=config_overrides slurmd trusts slurm.conf, and with
# CR_Core memory is not a consumable, so the profile's real requests (up to 64 GB) are accepted and
# recorded while nothing limits what a job uses.
REAL_MEMORY_MB = 131072
PARTITION = "debug"
REQUIRED_PROGRAMS = (
    "munged",
    "munge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "srun",
)


def missing_programs() -> list[str]:
    """The SLURM/munge programs not on PATH (or in /usr/sbin); empty when all are installed."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p, path=path) is None]


def _which(program: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(program, path=path)
    if found is None:
        raise RuntimeError(f"{program} not found: install slurm-wlm, slurm-client and munge")
    return found


def slurm_conf(root: Path, host: str) -> str:
    """The slurm.conf text of a one-node cluster whose files all live under `root`."""
    return f"""{MARKER} (written by tests/slurm_cluster.py; removed at teardown)
ClusterName=diffrep-ci
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
# keep finished jobs visible to squeue long enough for the executor's status checks and the test
MinJobAge=900
GresTypes=gpu
NodeName={host} CPUs={N_CPUS} RealMemory={REAL_MEMORY_MB} Gres=gpu:{N_GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(host: str) -> str:
    """gres.conf: N_GPUS fake GPUs, one character device each (never opened: with task/none and no
    cgroups the device files only let slurmd count the GPUs; without File= it reports 0)."""
    lines = [f"NodeName={host} Name=gpu File={dev}" for dev in FAKE_GPU_DEVICES[:N_GPUS]]
    return "\n".join([MARKER, *lines]) + "\n"


def _cmdline(pid: int) -> str:
    """The command line of a running process ('' if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _end_leftovers() -> None:
    """End daemons that a killed test session started (PID_FILE), if they still run the same command."""
    if not PID_FILE.exists():
        return
    for line in PID_FILE.read_text().splitlines():
        pid, _, cmdline = line.partition(" ")
        if cmdline and _cmdline(int(pid)) == cmdline:
            os.kill(int(pid), signal.SIGKILL)
    time.sleep(1)
    PID_FILE.unlink()


class SlurmCluster:
    """A one-node SLURM cluster rooted in a temporary folder; see the module docstring."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = None
        self._linked = False
        self._munge_dir: Path | None = None

    # -- bring-up ---------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> SlurmCluster:
        """Write the configuration, start munged, slurmctld and slurmd; wait until the node is idle."""
        if os.geteuid() != 0:
            raise RuntimeError("a test SLURM cluster needs root (slurmd runs jobs as root)")
        self._lock = open(LOCK_FILE, "w")  # noqa: SIM115 (held until stop())
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # waits for another session's cluster to stop
        try:
            _end_leftovers()
            self._write_config()
            self._start_munge()
            env = {**os.environ, "SLURM_CONF": str(self.conf)}
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)], env)
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(slurm_conf(self.root, self.host))
        (self.root / "gres.conf").write_text(gres_conf(self.host))
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        if ETC_CONF.is_symlink() or ETC_CONF.exists():
            text = ETC_CONF.read_text() if ETC_CONF.exists() else ""
            if not (ETC_CONF.is_symlink() and (not text or text.startswith(MARKER))):
                raise RuntimeError(
                    f"{ETC_CONF} exists and is not a diffrep test cluster's: refusing to replace a "
                    "real SLURM configuration"
                )
            ETC_CONF.unlink()  # left behind by a killed session
        ETC_CONF.symlink_to(self.conf)
        self._linked = True

    def _munge_works(self) -> bool:
        enc = subprocess.run([_which("munge"), "-n"], capture_output=True)
        if enc.returncode != 0:
            return False
        dec = subprocess.run([shutil.which("unmunge") or "unmunge"], input=enc.stdout, capture_output=True)
        return dec.returncode == 0

    def _start_munge(self) -> None:
        if MUNGE_SOCKET.exists() and self._munge_works():
            return  # a munged is already serving this machine: use it, and leave it running
        run_dir = MUNGE_SOCKET.parent
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        run_dir.chmod(0o755)
        # munged (as user munge) must reach its seed and log files: pytest's temp folders are 0700
        munge_dir = self._munge_dir = Path(tempfile.mkdtemp(prefix="diffrep-munge-"))
        shutil.chown(munge_dir, "munge", "munge")
        munge_dir.chmod(0o700)
        cmd = [
            _which("munged"), "--foreground", "--force",
            f"--pid-file={run_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
            f"--seed-file={munge_dir}/munged.seed",
        ]  # fmt: skip
        self._spawn("munged", cmd, dict(os.environ), user="munge")
        deadline = time.monotonic() + 15
        while not (MUNGE_SOCKET.exists() and self._munge_works()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not answer on {MUNGE_SOCKET}; log: {munge_dir}/munged.log")
            time.sleep(0.2)

    def _spawn(self, name: str, cmd: list[str], env: dict, user: str | None = None) -> None:
        out = open(self.root / f"{name}.out", "w")  # noqa: SIM115 (the daemon's output, closed at stop)
        as_user = {"user": user, "group": user, "extra_groups": []} if user else {}
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, **as_user
        )
        out.close()
        self.procs[name] = proc
        with open(PID_FILE, "a") as f:
            f.write(f"{proc.pid} {_cmdline(proc.pid)}\n")

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.root / f"{name}.out").read_text()[-2000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{log}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            res = self.run(["sinfo", "--noheader", "--format=%T", "--nodes", self.host], check=False)
            state = res.stdout.strip()
            if res.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"node {self.host} not idle after {timeout:.0f} s (state {state!r}); see "
            f"{self.root}/slurmctld.log and {self.root}/slurmd.log"
        )

    # -- use -----------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; return the CompletedProcess."""
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**os.environ, "SLURM_CONF": str(self.conf)},
            timeout=30,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def jobs(self, name: str) -> list[dict[str, str]]:
        """Jobs named `name` still known to slurmctld (all states), as `scontrol show job` fields."""
        ids = self.run(["squeue", "--states=all", "--noheader", "--format=%i", "--name", name]).stdout.split()
        return [self.job(i) for i in ids]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` of one job as {field: value} (JobState, TresPerJob, Comment …)."""
        line = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout.strip()
        fields, key = {}, None
        for token in line.split(" "):
            if "=" in token and token.split("=", 1)[0].replace("/", "").replace(":", "").isalnum():
                key, value = token.split("=", 1)
                fields[key] = value
            elif key is not None:  # a value with spaces (Command, Comment)
                fields[key] += " " + token
        return {k: v.strip() for k, v in fields.items()}

    # -- teardown -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel remaining jobs, end the daemons started here by PID, remove the /etc symlink."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--partition", PARTITION],
                env={**os.environ, "SLURM_CONF": str(self.conf)},
                capture_output=True,
                timeout=30,
            )
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        PID_FILE.unlink(missing_ok=True)
        if self._munge_dir is not None:
            shutil.rmtree(self._munge_dir, ignore_errors=True)
            self._munge_dir = None
        if self._linked and ETC_CONF.is_symlink():
            ETC_CONF.unlink()
            self._linked = False
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
