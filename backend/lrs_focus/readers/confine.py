"""Kernel confinement of a reader process: Landlock (files, TCP), seccomp (other sockets), rlimits.

Why the syscalls directly (ctypes) rather than a binding: of the PyPI bindings, `landlock`
(1.0.0.dev5) handles only filesystem rights (no TCP rules, no scopes), and `landlockpy` (0.2.0)
covers everything but is a months-old single-maintainer release; the three Landlock syscalls and
their three structs are a few dozen lines that a security boundary should not take on trust from a
new dependency. seccomp goes through the system's libseccomp (the field's library; Debian ships
it), called with ctypes because its Python bindings are not on PyPI (`pyseccomp` wraps the same
library, unmaintained since 2021).

What a confined reader may do (`confine`): read files and list folders beneath `read_roots`
(the allowed raster roots) and read/execute beneath `system_paths` (the interpreter, the venv,
shared libraries, GDAL's and PROJ's data); write, create or remove nothing anywhere; no TCP bind
or connect (Landlock ABI >= 4) except connect to `tcp_ports` (--allow-remote); no signals or
abstract UNIX sockets outside its own domain (ABI >= 6); no connect/sendmsg to a UNIX socket bound
to a path (ABI >= 9: RESOLVE_UNIX, never granted); and, by seccomp, no socket() of any family, no
socketpair() and no io_uring (with remote access: socket() for AF_INET/AF_INET6 only, socketpair()
allowed). A reader never makes a socket: it talks to the server over the socket it inherits, so
refusing AF_UNIX too closes path UNIX sockets on every kernel (Landlock before ABI 9 does not see
connect() on them).
What each kernel gives: ABI 1 (5.13) files; 2 (5.19) + REFER; 3 (6.2) + TRUNCATE; 4 (6.7) + TCP
bind/connect; 5 (6.10) + device ioctls; 6 (6.12) + scopes (abstract UNIX sockets, signals); 7
(6.15) audit logging flags; 8 (7.0) restrict all threads at once (TSYNC; a reader confines itself
before it starts a thread); 9 (7.1) + RESOLVE_UNIX (path UNIX sockets).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import sys
from typing import Iterable, Sequence

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same number on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_BY_ABI = {1: _FS_ABI1, 2: _FS_ABI1 | 1 << 13, 3: _FS_ABI1 | 3 << 13}  # + REFER, + TRUNCATE
_FS_ABI5 = _FS_ABI1 | 7 << 13  # + IOCTL_DEV
_FS_ABI9 = _FS_ABI5 | 1 << 16  # + RESOLVE_UNIX (connect/sendmsg to a path UNIX socket)
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | 1 << 14 | 1 << 15  # the rights a file rule may hold
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2


class ConfinementError(OSError):
    """The kernel cannot confine a reader (no Landlock, or it refused the rules)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(*args) -> int:
    result = _libc.syscall(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise ConfinementError(err, os.strerror(err))
    return result


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version, 0 when it has none (too old, disabled at boot, or
    not Linux: syscall 444 means something else there)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except ConfinementError:
        return 0


def _fs_rights(abi: int) -> int:
    return _FS_BY_ABI.get(abi, _FS_ABI5 if abi < 9 else _FS_ABI9)


def _add_path(ruleset: int, path: str, rights: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False  # absent on this system: nothing to allow
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)
    return True


def landlock(read_roots: Iterable[str], system_paths: Iterable[str], tcp_ports: Sequence[int] = ()) -> dict:
    """Restrict this process (and its future children) for good; returns what was enforced."""
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementError(errno.ENOSYS, "this kernel has no Landlock (Linux >= 5.13 with Landlock enabled)")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        roots = [p for p in read_roots if _add_path(ruleset, p, FS_READ_FILE | FS_READ_DIR)]
        system = [p for p in system_paths if _add_path(ruleset, p, FS_READ_FILE | FS_READ_DIR | FS_EXECUTE)]
        if abi >= 4:
            for port in tcp_ports:
                rule = _NetPort(NET_CONNECT_TCP, int(port))
                _syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), ctypes.c_uint32(0))
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise ConfinementError(err, os.strerror(err))
        _syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return {"landlock_abi": abi, "read_roots": roots, "system_paths": system,
            "tcp": ("connect to ports " + ",".join(map(str, tcp_ports)) if tcp_ports else "none") if abi >= 4
            else "not restricted (Landlock ABI < 4)",
            "scopes": "abstract unix sockets, signals" if abi >= 6 else "none (Landlock ABI < 6)",
            "unix_path_sockets": "no connect (Landlock ABI >= 9)" if abi >= 9
            else "not restricted by Landlock (ABI < 9); see seccomp"}


# -- seccomp: no socket() (but AF_INET/AF_INET6 for --allow-remote), no socketpair(), no io_uring ------
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_LT, _SCMP_CMP_EQ, _SCMP_CMP_GT = 2, 4, 6
_AF_INET, _AF_INET6 = 2, 10
#: io_uring could open sockets without the socket syscall.
_IO_URING = (b"io_uring_setup", b"io_uring_enter", b"io_uring_register")


def _scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _family_rules(allow_inet: bool) -> list:
    """socket()'s first argument (the family) refused: every value, or (remote access) every value
    but AF_INET and AF_INET6, as one comparison per rule (libseccomp takes one per argument)."""
    if not allow_inet:
        return [None]
    return ([(_SCMP_CMP_LT, _AF_INET), (_SCMP_CMP_GT, _AF_INET6)]
            + [(_SCMP_CMP_EQ, f) for f in range(_AF_INET + 1, _AF_INET6)])


def seccomp_no_sockets(allow_inet: bool = False) -> str:
    """Refuse (EACCES) socket() of every family (AF_UNIX too: Landlock before ABI 9 leaves connect()
    to a path UNIX socket open; a reader uses only the socket it inherits), socketpair() and io_uring.
    `allow_inet` (--allow-remote): socket() for AF_INET/AF_INET6 (TCP for curl, UDP for DNS) and
    socketpair() (curl's resolver thread wakes it by one) stay; AF_UNIX, netlink and packet sockets
    do not (glibc's resolver then reads /etc/hosts and asks DNS itself). Returns what was done."""
    try:  # the soname, not ctypes.util.find_library: that one runs gcc and ldconfig
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return "not applied: libseccomp.so.2 not found (only TCP is closed, by Landlock)"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ScmpArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise ConfinementError(errno.EINVAL, "seccomp_init failed")
    try:
        deny, rc = _scmp_act_errno(errno.EACCES), 0
        socket_nr = lib.seccomp_syscall_resolve_name(b"socket")
        if socket_nr < 0:  # pragma: no cover - every Linux arch has it
            raise ConfinementError(errno.ENOSYS, "seccomp does not know socket()")
        for cmp in _family_rules(allow_inet):
            args = None if cmp is None else (_ScmpArgCmp * 1)(_ScmpArgCmp(0, cmp[0], cmp[1], 0))
            rc = rc or lib.seccomp_rule_add_array(ctx, deny, socket_nr, 0 if cmp is None else 1, args)
        for call in _IO_URING + (() if allow_inet else (b"socketpair",)):
            number = lib.seccomp_syscall_resolve_name(call)
            if number >= 0:
                rc = rc or lib.seccomp_rule_add_array(ctx, deny, number, 0, None)
        rc = rc or lib.seccomp_load(ctx)
        if rc != 0:
            raise ConfinementError(-rc, f"seccomp rules refused: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
    if allow_inet:
        return f"socket() only for AF_INET/AF_INET6 (--allow-remote), no io_uring ({platform.machine()})"
    return f"no socket(), socketpair() or io_uring ({platform.machine()})"


def limit_resources(address_space_bytes: int, open_files: int = 256) -> None:
    """RLIMIT_AS (what a hostile block or buffer can take) and RLIMIT_NOFILE; no core files.
    RLIMIT_CPU is set per job (`cpu_budget`): a reader serves many jobs. No RLIMIT_FSIZE: Landlock
    already denies every write, and a stderr redirected to a file would make SIGXFSZ kill readers."""
    for which, value in ((resource.RLIMIT_AS, address_space_bytes), (resource.RLIMIT_NOFILE, open_files),
                         (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            if sys.platform.startswith("linux"):
                raise
            # macOS does not enforce RLIMIT_AS and refuses some values: the deadline still holds


def cpu_budget(seconds: float) -> None:
    """From now, at most `seconds` more CPU time (SIGXCPU ends the reader past it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = int(used + seconds) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
