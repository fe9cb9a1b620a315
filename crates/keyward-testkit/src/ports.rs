//! Free loopback ports for the servers the tests start themselves (Redis, PostgreSQL, nginx,
//! keyward nodes that must come back on the same port).
//!
//! Two things make "bind port 0, read it, close it" unsafe for a server started later: the
//! port comes from the kernel's ephemeral range, where any outgoing connection of any test
//! may take it before the server binds; and tests run as parallel processes that cannot see
//! each other's picks. So ports are drawn from below the ephemeral range, and each pick is
//! reserved across processes by a lock on a file that the kernel releases when the
//! reserving process ends.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// Ports are drawn from `LOW..HIGH`; a Redis Cluster node also needs `port + 10000` (its bus),
/// so both stay below the kernel's default ephemeral range (32768 and up).
const LOW: u16 = 10_000;
const HIGH: u16 = 22_768;

/// A free loopback port whose Cluster bus port (`port + 10000`) is free too, reserved for this
/// test process until it exits.
pub fn free_port() -> u16 {
    let dir = reservations();
    std::fs::create_dir_all(&dir).expect("a directory for port reservations");
    for _ in 0..1_000 {
        let port = LOW + random_u16() % (HIGH - LOW);
        if !reserve(&dir, port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port pair in {LOW}..{HIGH}");
}

/// `n` consecutive free loopback ports, all reserved; returns the first.
pub fn free_consecutive_ports(n: u16) -> u16 {
    let dir = reservations();
    std::fs::create_dir_all(&dir).expect("a directory for port reservations");
    'pick: for _ in 0..1_000 {
        let first = LOW + random_u16() % (HIGH - LOW - n);
        for port in first..first + n {
            // A pick that fails halfway keeps what it reserved: a few ports fewer for this
            // process, and never one handed out twice.
            if !reserve(&dir, port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue 'pick;
            }
        }
        return first;
    }
    panic!("no {n} consecutive free loopback ports in {LOW}..{HIGH}");
}

fn reservations() -> PathBuf {
    std::env::temp_dir().join("keyward-test-ports")
}

/// Reserve `port` for this process: hold an exclusive lock on its file until the process
/// exits (the kernel drops the lock then, however the process ends). `false` if another live
/// process holds it, or this one already does.
fn reserve(dir: &std::path::Path, port: u16) -> bool {
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let Ok(file) = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(format!("{port}.lock")))
    else {
        return false;
    };
    // A second lock from this same process on a new descriptor would fail too: flock locks
    // belong to the open file, so ports already held here are refused like anyone else's.
    if file.try_lock().is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
    true
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("OS randomness");
    u16::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (LOW..HIGH).contains(p)));
        let run = free_consecutive_ports(3);
        assert!((run..run + 3).all(|p| !ports.contains(&p)));
        assert!(!reserve(&reservations(), run + 1), "held already");
    }
}
