//! Who holds a listening TCP port: a port that answers proves nothing until
//! the listening socket is found in the service's own processes.
//!
//! Linux: the LISTEN sockets of `/proc/net/tcp` and `/proc/net/tcp6` give
//! each socket's inode; a process holds it when one of its `/proc/<pid>/fd`
//! links reads `socket:[inode]`.
//! macOS: each process's socket fds through `proc_pidfdinfo`
//! (`PROC_PIDFDSOCKETINFO`), the kernel's socket handle standing in for the
//! inode. There is no machine-wide table, so the listeners are those of
//! every process this user can read: another user's listener is not seen
//! (see docs/architecture.md, "Platforms").
//! The rule that judges them (`owner_in_tree`) is the same on both.

use std::net::IpAddr;

use super::identity::Identity;

/// One listening socket, as `/proc/net/tcp{,6}` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub ip: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// The LISTEN (state `0A`) sockets of a `/proc/net/tcp` or `tcp6` text.
pub fn parse_listeners(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let (ip, port) = fields.get(1)?.split_once(':')?;
            Some(Listener {
                ip: parse_ip(ip)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The kernel prints an address as 32-bit words in host byte order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<[u8; 4]>> = (0..hex.len() / 8)
        .map(|i| {
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()
                .map(u32::to_ne_bytes)
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The listeners that could accept a connection to `ip:port`: bound to that
/// address (IPv4-mapped counts) or to the unspecified one.
pub fn could_accept(listeners: &[Listener], ip: IpAddr, port: u16) -> Vec<Listener> {
    let canonical = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    listeners
        .iter()
        .filter(|l| l.port == port && (l.ip.is_unspecified() || canonical(l.ip) == canonical(ip)))
        .copied()
        .collect()
}

/// What the owner check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Every socket that could accept the connection belongs to the tree.
    Service,
    /// Nothing listens there.
    Nobody,
    /// A socket that could accept it belongs to no process of the tree.
    Stranger,
    /// This system offers no way to tell.
    Unknown,
}

/// The pure decision: `candidates` are the listeners that could accept the
/// connection, `owned` the socket inodes the service's processes hold.
pub fn judge_owner(candidates: &[Listener], owned: &[u64]) -> Owner {
    if candidates.is_empty() {
        Owner::Nobody
    } else if candidates.iter().all(|l| owned.contains(&l.inode)) {
        Owner::Service
    } else {
        Owner::Stranger
    }
}

/// Who holds `ip:port`: the process tree of `leader` (the leader, its
/// descendants, its group while it leads it), somebody else, or nobody.
#[cfg(target_os = "linux")]
pub fn owner_check(ip: IpAddr, port: u16, leader: Identity) -> Owner {
    let listeners: Vec<Listener> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| parse_listeners(&text))
        .collect();
    owner_in_tree(&listeners, ip, port, leader, socket_inodes)
}

/// macOS: the listeners on `port` of every process this user can read.
#[cfg(target_os = "macos")]
pub fn owner_check(ip: IpAddr, port: u16, leader: Identity) -> Owner {
    let listeners: Vec<Listener> = super::macos::all_pids()
        .into_iter()
        .flat_map(super::macos::listeners)
        .filter(|l| l.port == port)
        .collect();
    let held = |pid| {
        super::macos::listeners(pid)
            .into_iter()
            .map(|l| l.inode)
            .collect()
    };
    owner_in_tree(&listeners, ip, port, leader, held)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn owner_check(_ip: IpAddr, _port: u16, _leader: Identity) -> Owner {
    Owner::Unknown
}

/// The shared rule: of `listeners`, those that could accept `ip:port` must
/// all be among the sockets (`held(pid)`: their inodes) of `leader`'s tree.
#[cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(dead_code))]
fn owner_in_tree(
    listeners: &[Listener],
    ip: IpAddr,
    port: u16,
    leader: Identity,
    held: impl Fn(i32) -> Vec<u64>,
) -> Owner {
    let candidates = could_accept(listeners, ip, port);
    if candidates.is_empty() || !leader.is_alive() {
        return judge_owner(&candidates, &[]);
    }
    // Cheapest first: the leader itself, then its descendants; the whole
    // group (a process-table scan) only when those do not hold it all.
    let mut owned = held(leader.pid);
    let tree = super::tree::descendants(leader);
    for member in &tree {
        if judge_owner(&candidates, &owned) == Owner::Service {
            break;
        }
        owned.extend(held(member.pid));
    }
    if judge_owner(&candidates, &owned) != Owner::Service {
        for member in super::group::live_members(leader) {
            owned.extend(held(member.pid));
        }
    }
    // Read after the fds: a leader whose pid changed hands meanwhile proves nothing.
    if !leader.is_alive() {
        return judge_owner(&candidates, &[]);
    }
    judge_owner(&candidates, &owned)
}

/// What macOS's `socket_fdinfo` says of one socket, as plain numbers (the
/// FFI layer in `macos.rs` fills it; the reading is here, tested everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DarwinSocket {
    /// `soi_kind`: `SOCKINFO_TCP` (2) for a TCP socket.
    pub kind: i32,
    /// `soi_family`: Darwin's `AF_INET` (2) or `AF_INET6` (30).
    pub family: i32,
    /// `tcpsi_state`: `TSI_S_LISTEN` (1) for a listener.
    pub state: i32,
    /// `insi_lport`: the port in network byte order, in an int.
    pub local_port: i32,
    /// `insi_laddr` as stored: an IPv4 address in the last 4 bytes.
    pub local_addr: [u8; 16],
    /// `soi_so`: the kernel's handle of the socket.
    pub handle: u64,
}

/// The listener a Darwin socket is, if it is a listening TCP socket.
pub fn darwin_listener(s: &DarwinSocket) -> Option<Listener> {
    const SOCKINFO_TCP: i32 = 2;
    const TSI_S_LISTEN: i32 = 1;
    const AF_INET: i32 = 2;
    const AF_INET6: i32 = 30;
    if s.kind != SOCKINFO_TCP || s.state != TSI_S_LISTEN {
        return None;
    }
    let ip = match s.family {
        AF_INET => IpAddr::from(<[u8; 4]>::try_from(&s.local_addr[12..]).ok()?),
        AF_INET6 => IpAddr::from(s.local_addr),
        _ => return None,
    };
    Some(Listener {
        ip,
        port: u16::from_be(s.local_port as u16),
        inode: s.handle,
    })
}

/// The socket inodes `pid` holds open.
#[cfg(target_os = "linux")]
fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
";

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_listeners_only() {
        let l = parse_listeners(TCP);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[0].ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(l[0].port, 8080);
        assert_eq!(l[0].inode, 111);
        assert_eq!(l[1].port, 22);
        let l6 = parse_listeners(TCP6);
        assert_eq!(l6[0].ip, "::".parse::<IpAddr>().unwrap());
        assert_eq!(l6[0].port, 8081);
    }

    #[test]
    fn owner_table() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let any6: IpAddr = "::".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let l = |ip, port, inode| Listener { ip, port, inode };
        let cases = [
            (
                "ours on the address",
                vec![l(lo, 80, 1)],
                vec![1],
                Owner::Service,
            ),
            (
                "ours on any address",
                vec![l(any4, 80, 1)],
                vec![1],
                Owner::Service,
            ),
            (
                "ours dual-stack",
                vec![l(any6, 80, 1)],
                vec![1],
                Owner::Service,
            ),
            (
                "ours v4-mapped",
                vec![l(mapped, 80, 1)],
                vec![1],
                Owner::Service,
            ),
            ("a stranger's", vec![l(lo, 80, 2)], vec![1], Owner::Stranger),
            (
                "ours and a stranger's",
                vec![l(any4, 80, 1), l(lo, 80, 2)],
                vec![1],
                Owner::Stranger,
            ),
            (
                "nothing on the port",
                vec![l(lo, 81, 1)],
                vec![1],
                Owner::Nobody,
            ),
            (
                "another address only",
                vec![l(other, 80, 2)],
                vec![],
                Owner::Nobody,
            ),
        ];
        for (what, listeners, owned, want) in cases {
            let candidates = could_accept(&listeners, lo, 80);
            assert_eq!(judge_owner(&candidates, &owned), want, "{what}");
        }
    }

    #[test]
    fn darwin_sockets_read_as_listeners() {
        let mut v4 = [0u8; 16];
        v4[12..].copy_from_slice(&[127, 0, 0, 1]);
        let v6: [u8; 16] = "::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        // The kernel stores the port's network-order bytes; read as a host int.
        let port = |p: u16| i32::from(u16::from_ne_bytes(p.to_be_bytes()));
        let sock = |kind, family, state, addr| DarwinSocket {
            kind,
            family,
            state,
            local_port: port(8080),
            local_addr: addr,
            handle: 0xfeed,
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let cases = [
            ("tcp v4 listener", sock(2, 2, 1, v4), Some(lo)),
            ("tcp v6 listener", sock(2, 30, 1, v6), Some(lo6)),
            ("established, not listening", sock(2, 2, 4, v4), None),
            ("udp (SOCKINFO_IN)", sock(1, 2, 1, v4), None),
            ("unix socket", sock(3, 1, 1, v4), None),
            ("unknown family", sock(2, 10, 1, v4), None),
        ];
        for (what, s, want) in cases {
            let got = darwin_listener(&s);
            assert_eq!(got.map(|l| l.ip), want, "{what}");
            if let Some(l) = got {
                assert_eq!((l.port, l.inode), (8080, 0xfeed), "{what}");
            }
        }
    }

    /// The whole check, on whichever system runs the tests.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn our_own_listener_is_ours_and_a_childs_is_not_the_parents() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = Identity::of(std::process::id() as i32).unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(owner_check(lo, port, me), Owner::Service);
        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let mut child = scopeguard(child);
        let other = Identity::of(child.0.id() as i32).unwrap();
        assert_eq!(owner_check(lo, port, other), Owner::Stranger);
        let _ = child.0.kill();
        drop(listener);
        assert_eq!(owner_check(lo, port, me), Owner::Nobody);
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    struct Guard(std::process::Child);

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    fn scopeguard(c: std::process::Child) -> Guard {
        Guard(c)
    }
}
