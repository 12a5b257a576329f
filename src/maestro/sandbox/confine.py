"""What an isolated process may do, applied by the process to itself right after it starts.

- **Resource limits**: address space, CPU seconds, open files, written file size, no
  core dumps. A model that allocates past its budget gets ``MemoryError`` (or dies),
  one that spins is killed by the kernel, and neither can touch the API process.
- **Landlock** (Linux 5.13 and newer): the file system becomes read-only and limited to
  what Python needs (the interpreter's libraries, installed packages, system
  libraries) plus the scratch directories a task is given; nothing can be executed;
  TCP connections are refused (Linux 6.7+) and signals to processes outside the
  sandbox are blocked (Linux 6.12+). The data directory, with the database and the
  signing key, is out of reach.
- **seccomp**: no new sockets, no connections, no ptrace or reading other processes'
  memory, no program execution, and signals only to itself, on any Linux.

Landlock and seccomp are defences for the case where a crafted file has already
corrupted the process's memory; each is applied where the kernel offers it, and
``apply`` reports what was.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import signal
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Address space a task gets on top of what the interpreter and its libraries already
# map (thread stacks, allocator arenas): not memory the task can fill with data.
ADDRESS_SPACE_SLACK = 384 * 1024**2


@dataclass(frozen=True)
class Limits:
    """Resource limits of one isolated process; None leaves that resource unlimited."""

    memory_bytes: int | None = 1024**3  # address space beyond the libraries' own
    cpu_seconds: int | None = 60
    open_files: int = 64
    file_bytes: int | None = 0  # largest file it may write; 0: none at all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_limits(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.memory_bytes is not None:
        ceiling = _vm_size() + ADDRESS_SPACE_SLACK + limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    if limits.cpu_seconds is not None:
        # The soft limit sends SIGXCPU (which kills); the hard one, a second later, SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    if limits.file_bytes is not None:
        # A write past the limit fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))


# --- Landlock ------------------------------------------------------------------------------------
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_TRUNCATE = 1 << 14
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

_READ = _FS_READ_FILE | _FS_READ_DIR
_READ_FILE_ONLY = _FS_READ_FILE
_WRITE = (
    _READ | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG | _FS_TRUNCATE
)
# Directories every Python process reads: system libraries and the CPU description
# numerical libraries size their thread pools from.
_SYSTEM_READABLE = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/self",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/null",
    "/dev/urandom",
)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none."""
    if platform.system() != "Linux":
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET,
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(version), 0)


def python_paths() -> list[str]:
    """Where this interpreter reads code from: the standard library, installed packages
    and the import path, without the current directory."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__))}
    paths.update(value for key, value in sysconfig.get_paths().items() if key.endswith(("lib", "stdlib")))
    paths.update(entry for entry in sys.path if entry and os.path.isabs(entry))
    return sorted(paths)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def landlock(readable: list[str], writable: list[str], protected: list[str]) -> int:
    """Restrict this process to reading ``readable`` (and Python's own files) and writing
    ``writable``. A readable directory that holds a ``protected`` one is left out, so
    the data directory stays unreadable even where it lives inside the code's tree.
    Returns the ABI applied, 0 when the kernel has no Landlock."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    libc = _libc()
    handled_fs = (1 << 13) - 1
    if abi >= 2:
        handled_fs |= 1 << 13  # REFER
    if abi >= 3:
        handled_fs |= _FS_TRUNCATE
    if abi >= 5:
        handled_fs |= 1 << 15  # IOCTL_DEV
    attr = _RulesetAttr(
        handled_access_fs=handled_fs,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    protected_real = [os.path.realpath(path) for path in protected]
    try:
        read_paths = [*python_paths(), *_SYSTEM_READABLE, *readable]
        rules = [(path, _READ) for path in read_paths] + [(path, _WRITE & handled_fs) for path in writable]
        for path, access in rules:
            real = os.path.realpath(path)
            if any(_inside(guarded, real) for guarded in protected_real):
                continue
            _add_path_rule(libc, ruleset, real, access)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def _add_path_rule(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not on this machine
    try:
        if not os.path.isdir(path):
            access &= _FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE
        rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


# --- seccomp ------------------------------------------------------------------------------------
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | 1
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

# (audit arch, syscalls refused outright, syscalls allowed only on the process itself)
_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "connect": 42,
            "execve": 59,
            "ptrace": 101,
            "tkill": 200,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "execveat": 322,
            "pidfd_send_signal": 424,
            "pidfd_open": 434,
            "pidfd_getfd": 438,
        },
        {"kill": 62, "tgkill": 234},
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198,
            "connect": 203,
            "execve": 221,
            "ptrace": 117,
            "tkill": 130,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "execveat": 281,
            "pidfd_send_signal": 424,
            "pidfd_open": 434,
            "pidfd_getfd": 438,
        },
        {"kill": 129, "tgkill": 131},
    ),
}


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


def seccomp_program(machine: str, pid: int) -> list[tuple[int, int, int, int]] | None:
    """The BPF program: refuse the listed system calls with EPERM, allow signals only to
    ``pid`` itself, allow everything else. None on an architecture not listed."""
    known = _SYSCALLS.get(machine)
    if known is None:
        return None
    arch, refused, own_only = known
    numbers = sorted(refused.values())
    checked = sorted(own_only.values())
    # Layout: [load arch, check arch, load nr, x32 guard, refused…, own-only…, allow, deny,
    #          own-only check: load arg0, compare with pid, (allow | deny)]
    program: list[tuple[int, int, int, int]] = []
    body = 4 + len(numbers) + len(checked)
    deny_at, own_at = body + 1, body + 2

    def jump(to: int) -> int:
        return to - len(program) - 1

    program.append((_LD_ABS, 0, 0, 4))  # seccomp_data.arch
    program.append((_JEQ, 0, jump(deny_at), arch))  # another ABI (i386 on x86_64): refused
    program.append((_LD_ABS, 0, 0, 0))  # seccomp_data.nr
    program.append((_JGE, jump(deny_at), 0, 0x40000000))  # x32 system calls on x86_64
    for number in numbers:
        program.append((_JEQ, jump(deny_at), 0, number))
    for number in checked:
        program.append((_JEQ, jump(own_at), 0, number))
    program.append((_RET, 0, 0, _RET_ALLOW))
    program.append((_RET, 0, 0, _RET_EPERM))
    low_word = 16 if sys.byteorder == "little" else 20  # seccomp_data.args[0], lower 32 bits
    program.append((_LD_ABS, 0, 0, low_word))
    program.append((_JEQ, 0, 1, pid))
    program.append((_RET, 0, 0, _RET_ALLOW))
    program.append((_RET, 0, 0, _RET_EPERM))
    return program


def seccomp() -> bool:
    """Install the filter on this process (and every thread it starts later)."""
    if platform.system() != "Linux":
        return False
    program = seccomp_program(platform.machine(), os.getpid())
    if program is None:
        return False
    libc = _libc()
    filters = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    fprog = _SockFprog(len(program), filters)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter refused")
    return True


def apply(
    limits: Limits, *, readable: list[str], writable: list[str], protected: list[str]
) -> dict[str, Any]:
    """Confine this process for good; returns what was applied."""
    for path in writable:
        Path(path).mkdir(parents=True, exist_ok=True)
    apply_limits(limits)
    applied: dict[str, Any] = {"limits": limits.to_dict(), "landlock": 0, "seccomp": False}
    with contextlib.suppress(OSError):
        applied["landlock"] = landlock(readable, writable, protected)
    with contextlib.suppress(OSError):
        applied["seccomp"] = seccomp()
    return applied
