//! macOS's view of processes, through libproc, `sysctl` and kqueue: the
//! counterparts of what Linux reads from /proc and pidfds. The rules that use
//! them (who belongs to a service, when a group may be signalled) are shared
//! and live in `identity` and `signal`; this file only answers questions.

use std::os::fd::OwnedFd;

use nix::sys::event::{EventFilter, EventFlag, FilterFlag, KEvent, Kqueue};

use super::identity::{Identity, ProcInfo};
use super::procargs;

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

/// Live (non-zombie) members of process group `pgid`, as identities.
pub fn group_members(pgid: i32) -> Vec<Identity> {
    // SAFETY: the kernel writes at most `size` bytes of pids into `buf`.
    let pids = list_pids(|buf, size| unsafe { libc::proc_listpgrppids(pgid, buf, size) });
    live_identities(pids)
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
