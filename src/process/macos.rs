//! macOS's view of processes, through libproc, `sysctl` and kqueue: the
//! counterparts of what Linux reads from /proc and pidfds. The rules that use
//! them (who belongs to a service, when a group may be signalled) are shared
//! and live in `identity` and `signal`; this file only answers questions.

use std::os::fd::OwnedFd;

use nix::sys::event::{EventFilter, EventFlag, FilterFlag, KEvent, Kqueue};

use super::identity::{Identity, ProcInfo, Stat};
use super::procargs;
use super::sockets::Listener;

/// One `proc_pidinfo` query of a plain-data struct `T`.
pub fn pidinfo<T>(pid: i32, flavor: libc::c_int) -> Option<T> {
    let mut info = std::mem::MaybeUninit::<T>::zeroed();
    let size = std::mem::size_of::<T>() as libc::c_int;
    // SAFETY: T is plain old data; the kernel writes at most `size` bytes
    // and returns how many it wrote.
    let written = unsafe { libc::proc_pidinfo(pid, flavor, 0, info.as_mut_ptr().cast(), size) };
    // SAFETY: fully written when the kernel says so.
    (written == size).then(|| unsafe { info.assume_init() })
}

/// `pid`'s BSD info: parent, group, status, start time.
pub fn bsd_info(pid: i32) -> Option<libc::proc_bsdinfo> {
    pidinfo(pid, libc::PROC_PIDTBSDINFO)
}

/// psm's start time (µs since the epoch) from a BSD info.
pub fn start_time(info: &libc::proc_bsdinfo) -> u64 {
    info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec
}

/// Parent, group, session, start time and zombie state of `pid`.
/// `proc_bsdinfo` has no session id, so it comes from `getsid`, and the BSD
/// info is read again after it: a pid that changed hands in between gives
/// nothing rather than a stranger's session under our start time.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let before = bsd_info(pid)?;
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).ok()?;
    let after = bsd_info(pid)?;
    (start_time(&before) == start_time(&after)).then(|| Stat {
        ppid: after.pbi_ppid as i32,
        pgid: after.pbi_pgid as i32,
        sid: sid.as_raw(),
        start_time: start_time(&after),
        zombie: after.pbi_status == libc::SZOMB,
    })
}

/// The pids a `proc_list*pids` call fills in, grown until they fit.
fn list_pids(fill: impl Fn(*mut libc::c_void, libc::c_int) -> libc::c_int) -> Vec<i32> {
    let mut pids: Vec<libc::pid_t> = vec![0; 256];
    loop {
        let bytes = (pids.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
        let written = fill(pids.as_mut_ptr().cast(), bytes);
        if written <= 0 {
            return Vec::new();
        }
        let n = written as usize / std::mem::size_of::<libc::pid_t>();
        // A full buffer may have been cut short: grow and ask again.
        if n < pids.len() {
            pids.truncate(n);
            pids.retain(|&p| p > 0);
            return pids;
        }
        pids.resize(pids.len() * 2, 0);
    }
}

/// The pids in process group `pgid` (zombies included).
pub fn group_pids(pgid: i32) -> Vec<i32> {
    // SAFETY: the kernel writes at most `size` bytes of pids into `buf`.
    list_pids(|buf, size| unsafe { libc::proc_listpgrppids(pgid, buf, size) })
}

/// Live (non-zombie) children of `ppid`, as identities.
pub fn children(ppid: i32) -> Vec<Identity> {
    // SAFETY: as above.
    let pids = list_pids(|buf, size| unsafe { libc::proc_listchildpids(ppid, buf, size) });
    live_identities(pids)
}

/// Every pid on the machine (those this user may see).
pub fn all_pids() -> Vec<i32> {
    // SAFETY: as above.
    list_pids(|buf, size| unsafe { libc::proc_listallpids(buf, size) })
}

fn live_identities(pids: Vec<i32>) -> Vec<Identity> {
    pids.into_iter()
        .filter_map(|pid| {
            let info = ProcInfo::read(pid).filter(|i| !i.zombie)?;
            Some(Identity {
                pid,
                start_time: info.start_time,
            })
        })
        .collect()
}

/// The raw `KERN_PROCARGS2` buffer of `pid` (arguments and environment);
/// readable for processes of the same user.
pub fn procargs(pid: i32) -> Option<Vec<u8>> {
    let mut mib = [libc::CTL_KERN, libc::KERN_PROCARGS2, pid];
    let mut size: libc::size_t = 0;
    // SAFETY: a null buffer asks only for the size.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || size == 0 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: the kernel writes at most `size` bytes and updates `size`.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            buf.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    buf.truncate(size);
    Some(buf)
}

/// `pid`'s environment as a NUL-separated block, the layout of Linux's
/// `/proc/<pid>/environ`; readable for processes of the same user.
pub fn environ(pid: i32) -> Option<Vec<u8>> {
    procargs::environ_block(&procargs(pid)?)
}

/// `pid`'s arguments (`argv`), for processes of the same user.
pub fn argv(pid: i32) -> Option<Vec<Vec<u8>>> {
    let buf = procargs(pid)?;
    let args = procargs::arguments(&buf)?;
    Some(args.into_iter().map(<[u8]>::to_vec).collect())
}

/// `pid`'s state as `ps` prints it: R(unnable), S(leeping), T (stopped),
/// Z(ombie); `None` when there is no such pid.
pub fn state(pid: i32) -> Option<char> {
    Some(match bsd_info(pid)?.pbi_status {
        libc::SSTOP => 'T',
        libc::SZOMB => 'Z',
        libc::SSLEEP => 'S',
        _ => 'R',
    })
}

/// The value of environment variable `name` in process `pid`.
pub fn env_var(pid: i32, name: &str) -> Option<Vec<u8>> {
    let buf = procargs(pid)?;
    procargs::env_var(&buf, name).map(<[u8]>::to_vec)
}

/// A kqueue that becomes readable when `identity` exits (`EVFILT_PROC`,
/// `NOTE_EXIT`): macOS's pidfd. Verified after registration, so a pid
/// reused in between cannot slip through.
pub fn exit_fd(identity: Identity) -> Option<OwnedFd> {
    let kq = Kqueue::new().ok()?;
    let change = KEvent::new(
        identity.pid as libc::uintptr_t,
        EventFilter::EVFILT_PROC,
        EventFlag::EV_ADD | EventFlag::EV_ONESHOT,
        FilterFlag::NOTE_EXIT,
        0,
        0,
    );
    kq.kevent(&[change], &mut [], None).ok()?;
    identity.is_alive().then(|| kq.into())
}

/// The TCP listeners among `pid`'s open files, each with the kernel's
/// handle of its socket (`soi_so`, the same in every process sharing it)
/// as its `inode`. Another user's process gives nothing: its files are not
/// ours to read.
pub fn listeners(pid: i32) -> Vec<Listener> {
    socket_infos(pid)
        .iter()
        .filter_map(|info| {
            let psi = &info.psi;
            // SAFETY: every variant of the union is plain data; `pri_tcp`
            // is the one the kernel filled for `SOCKINFO_TCP`, which
            // `darwin_listener` checks before it uses a field.
            let tcp = unsafe { psi.soi_proto.pri_tcp };
            let ini = &tcp.tcpsi_ini;
            super::sockets::darwin_listener(&super::sockets::DarwinSocket {
                kind: psi.soi_kind,
                family: psi.soi_family,
                state: tcp.tcpsi_state,
                local_port: ini.insi_lport,
                local_addr: addr_bytes(ini.insi_laddr),
                handle: psi.soi_so,
            })
        })
        .collect()
}

/// The bytes of an address as the kernel stored them (network order).
fn addr_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// The socket infos of every socket `pid` holds open.
fn socket_infos(pid: i32) -> Vec<SocketFdInfo> {
    let fd_size = std::mem::size_of::<libc::proc_fdinfo>();
    let mut fds: Vec<libc::proc_fdinfo> = Vec::new();
    let mut room = 64;
    loop {
        fds.resize(
            room,
            libc::proc_fdinfo {
                proc_fd: 0,
                proc_fdtype: 0,
            },
        );
        let bytes = (room * fd_size) as libc::c_int;
        // SAFETY: the kernel writes at most `bytes` bytes of fd records.
        let written = unsafe {
            libc::proc_pidinfo(
                pid,
                libc::PROC_PIDLISTFDS,
                0,
                fds.as_mut_ptr().cast(),
                bytes,
            )
        };
        if written <= 0 {
            return Vec::new();
        }
        let n = written as usize / fd_size;
        // A full buffer may have been cut short: grow and ask again.
        if n < room {
            fds.truncate(n);
            break;
        }
        room *= 2;
    }
    fds.iter()
        .filter(|fd| fd.proc_fdtype as libc::c_int == libc::PROX_FDTYPE_SOCKET)
        .filter_map(|fd| {
            let mut info = std::mem::MaybeUninit::<SocketFdInfo>::zeroed();
            let size = std::mem::size_of::<SocketFdInfo>() as libc::c_int;
            // SAFETY: plain data; the kernel writes at most `size` bytes and
            // returns how many it wrote.
            let written = unsafe {
                libc::proc_pidfdinfo(
                    pid,
                    fd.proc_fd,
                    PROC_PIDFDSOCKETINFO,
                    info.as_mut_ptr().cast(),
                    size,
                )
            };
            // SAFETY: fully written when the kernel says so.
            (written == size).then(|| unsafe { info.assume_init() })
        })
        .collect()
}

/// `proc_pidfdinfo` flavor for a socket (sys/proc_info.h); libc binds the
/// call but not this flavor or its structs, and the `libproc` crate would
/// bring bindgen (and a macOS SDK) into every build for these few fields.
const PROC_PIDFDSOCKETINFO: libc::c_int = 3;

// The structs below follow <sys/proc_info.h> field for field up to what psm
// reads; the union is padded to its largest member (`un_sockinfo`, 528
// bytes), so the kernel's size check passes. The asserts pin the offsets.

/// `struct socket_fdinfo`. Fields psm does not read are there for the
/// layout only.
#[allow(dead_code)]
#[repr(C)]
#[derive(Clone, Copy)]
struct SocketFdInfo {
    pfi: ProcFileInfo,
    psi: SocketInfo,
}

/// `struct proc_fileinfo`.
#[allow(dead_code)]
#[repr(C)]
#[derive(Clone, Copy)]
struct ProcFileInfo {
    fi_openflags: u32,
    fi_status: u32,
    fi_offset: i64,
    fi_type: i32,
    fi_guardflags: u32,
}

/// `struct socket_info`.
#[allow(dead_code)]
#[repr(C)]
#[derive(Clone, Copy)]
struct SocketInfo {
    soi_stat: libc::vinfo_stat,
    soi_so: u64,
    soi_pcb: u64,
    soi_type: libc::c_int,
    soi_protocol: libc::c_int,
    soi_family: libc::c_int,
    /// options, linger, state, qlen, incqlen, qlimit, timeo
    soi_shorts: [i16; 7],
    soi_error: u16,
    soi_oobmark: u32,
    /// `struct sockbuf_info` × 2 (receive, send): 5 u32 and 2 shorts each
    soi_bufs: [u32; 12],
    soi_kind: libc::c_int,
    rfu_1: u32,
    soi_proto: SocketProto,
}

/// The union of per-protocol infos in `socket_info`.
#[allow(dead_code)]
#[repr(C)]
#[derive(Clone, Copy)]
union SocketProto {
    pri_tcp: TcpSockInfo,
    size: [u64; 66],
}

/// `struct tcp_sockinfo`.
#[allow(dead_code)]
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpSockInfo {
    tcpsi_ini: InSockInfo,
    tcpsi_state: libc::c_int,
    tcpsi_timer: [libc::c_int; 4],
    tcpsi_mss: libc::c_int,
    tcpsi_flags: u32,
    rfu_1: u32,
    tcpsi_tp: u64,
}

/// `struct in_sockinfo`; an address is a union of `in4in6_addr` (the IPv4
/// address in its last 4 bytes) and `in6_addr`, 4-byte aligned.
#[allow(dead_code)]
#[repr(C)]
#[derive(Clone, Copy)]
struct InSockInfo {
    insi_fport: libc::c_int,
    insi_lport: libc::c_int,
    insi_gencnt: u64,
    insi_flags: u32,
    insi_flow: u32,
    insi_vflag: u8,
    insi_ip_ttl: u8,
    rfu_1: u32,
    insi_faddr: [u32; 4],
    insi_laddr: [u32; 4],
    insi_v4_tos: u8,
    /// hlim (u8), cksum (int), ifindex (u16), hops (i16)
    insi_v6: [u32; 3],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<libc::vinfo_stat>() == 136);
    assert!(size_of::<ProcFileInfo>() == 24);
    assert!(size_of::<InSockInfo>() == 80);
    assert!(offset_of!(InSockInfo, insi_laddr) == 48);
    assert!(size_of::<TcpSockInfo>() == 120);
    assert!(offset_of!(SocketInfo, soi_so) == 136);
    assert!(offset_of!(SocketInfo, soi_family) == 160);
    assert!(offset_of!(SocketInfo, soi_kind) == 232);
    assert!(offset_of!(SocketInfo, soi_proto) == 240);
    assert!(size_of::<SocketInfo>() == 768);
    assert!(size_of::<SocketFdInfo>() == 792);
};

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    use super::*;

    /// A child killed and reaped on drop.
    struct Guard(Child);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper(setsid: bool) -> Guard {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").env("PSM_MACOS_TEST", "marked value");
        if setsid {
            // SAFETY: setsid is async-signal-safe and touches no parent memory.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()
                        .map(drop)
                        .map_err(std::io::Error::from)
                });
            }
        }
        Guard(cmd.spawn().unwrap())
    }

    /// `proc_listchildpids` lists a child of this process, with its identity.
    #[test]
    fn lists_own_child_by_parent() {
        let child = sleeper(false);
        let pid = child.0.id() as i32;
        let me = std::process::id() as i32;
        assert!(children(me).iter().any(|id| id.pid == pid));
        assert_eq!(stat(pid).unwrap().ppid, me);
    }

    /// `proc_listpgrppids` lists this process in its own group, and a
    /// `setsid` child alone in its new group, whose session is its own pid.
    #[test]
    fn lists_groups_and_reads_sessions() {
        let me = std::process::id() as i32;
        let own = ProcInfo::read(me).unwrap().pgid;
        assert!(group_pids(own).contains(&me));
        let child = sleeper(true);
        let pid = child.0.id() as i32;
        // Until setsid ran in the child the group is ours: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat(pid).map(|s| s.sid) != Some(pid) {
            assert!(std::time::Instant::now() < deadline, "setsid never showed");
            std::thread::sleep(std::time::Duration::from_millis(20)); // poll
        }
        assert_eq!(group_pids(pid), vec![pid]);
        let s = stat(pid).unwrap();
        assert_eq!((s.pgid, s.sid, s.zombie), (pid, pid, false));
    }

    /// `KERN_PROCARGS2` gives a child's environment, not its arguments.
    #[test]
    fn reads_a_childs_environment() {
        let child = sleeper(false);
        let pid = child.0.id() as i32;
        // exec may not have happened yet: the environment shows once it has.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while env_var(pid, "PSM_MACOS_TEST").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "environment never readable"
            );
            std::thread::sleep(std::time::Duration::from_millis(20)); // poll
        }
        assert_eq!(env_var(pid, "PSM_MACOS_TEST").unwrap(), b"marked value");
        assert!(environ(pid)
            .unwrap()
            .split(|&b| b == 0)
            .any(|v| v == b"PSM_MACOS_TEST=marked value"));
    }

    /// The kqueue exit fd becomes readable when the process dies, not before.
    #[test]
    fn kqueue_reports_a_childs_exit() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut child = sleeper(false);
        let id = Identity::of(child.0.id() as i32).unwrap();
        let fd = exit_fd(id).unwrap();
        let ready = |ms: u16| {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(ms)).unwrap() > 0
        };
        // A short wait may only show that nothing happened yet.
        assert!(!ready(50), "readable while the child runs");
        child.0.kill().unwrap();
        assert!(ready(10_000), "not readable after the child died");
        let gone = Identity {
            pid: i32::MAX - 1,
            start_time: 1,
        };
        assert!(
            exit_fd(gone).is_none(),
            "no fd for a process that is not there"
        );
    }

    /// `proc_pidfdinfo` finds this process's listening socket, with its
    /// address and port, and the same handle twice.
    #[test]
    fn finds_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let found: Vec<Listener> = listeners(me)
            .into_iter()
            .filter(|l| l.port == port)
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].ip, std::net::IpAddr::from([127, 0, 0, 1]));
        assert_ne!(found[0].inode, 0);
        let again: Vec<u64> = listeners(me)
            .iter()
            .filter(|l| l.port == port)
            .map(|l| l.inode)
            .collect();
        assert_eq!(again, vec![found[0].inode]);
        drop(listener);
        assert!(
            !listeners(me).iter().any(|l| l.port == port),
            "a closed listener"
        );
    }
}
