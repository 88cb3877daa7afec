//! Connection-id steering: every shard's connection ids carry the shard number in their
//! first byte, and a classic BPF program on the `SO_REUSEPORT` group sends each packet
//! to the socket (shard) named in its destination connection id. Without it, a client
//! whose address or port changes (NAT rebinding, Wi-Fi to cellular) hashes to a random
//! shard and about half such connections die (measured; `shared/FINDINGS.md`).
//!
//! The classic program indexes sockets by their order in the reuseport group, so the
//! shards' sockets are all bound, in shard order, before any packet is served.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};
use socket2::{Domain, Protocol, Socket, Type};

/// Length of our connection ids: the shard byte plus 15 random bytes.
pub const CID_LEN: usize = 16;

/// Issues connection ids whose first byte is the shard, and refuses ids of other shards.
#[derive(Debug, Clone, Copy)]
pub struct ShardCidGenerator {
    shard: u8,
}

impl ShardCidGenerator {
    /// A generator for `shard` (< 256).
    pub fn new(shard: u8) -> Self {
        Self { shard }
    }
}

impl ConnectionIdGenerator for ShardCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        rand::fill(&mut bytes[1..]);
        bytes[0] = self.shard;
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // A packet for another shard's connection must never be answered here (for
        // example with a stateless reset that would kill that connection).
        if cid.len() == CID_LEN && cid.first() == Some(&self.shard) {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Binds `count` UDP sockets to one address with `SO_REUSEPORT`, in shard order, and
/// attaches the steering program. Binding port 0 picks a free port for all of them.
pub fn bind_group(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Large buffers absorb bursts (quinn batches with GSO/GRO where available).
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        let bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("bound socket has no inet address"))?;
        addr.set_port(bound.port());
        sockets.push(std::net::UdpSocket::from(socket));
    }
    if count > 1
        && let Some(first) = sockets.first()
    {
        attach_steering(first, count)?;
    }
    Ok(sockets)
}

/// The steering program: A = the first byte of the destination connection id (offset 1
/// in a short header, 6 in a long header); return A mod shards.
fn steering_program(shards: u32) -> [libc::sock_filter; 7] {
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const RET_A: u16 = 0x16; // BPF_RET | BPF_A
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        ins(LD_B_ABS, 0, 0, 0),   // 0: A = flags byte
        ins(JSET_K, 2, 0, 0x80),  // 1: long header (RFC 9000 §17.2)? -> 4
        ins(LD_B_ABS, 0, 0, 1),   // 2: short header: DCID starts at byte 1
        ins(JA, 0, 0, 1),         // 3: -> 5
        ins(LD_B_ABS, 0, 0, 6),   // 4: long header: DCID starts at byte 6
        ins(MOD_K, 0, 0, shards), // 5: A %= shards
        ins(RET_A, 0, 0, 0),      // 6: socket index
    ]
}

fn attach_steering(socket: &std::net::UdpSocket, shards: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let shards = u32::try_from(shards).map_err(|_| std::io::Error::other("too many shards"))?;
    let mut program = steering_program(shards);
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
    // program during setsockopt and validates it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_shard_and_only_own_ids_validate() {
        let mut a = ShardCidGenerator::new(3);
        let b = ShardCidGenerator::new(4);
        let id = a.generate_cid();
        assert_eq!(id.len(), CID_LEN);
        assert_eq!(id[0], 3);
        assert!(a.validate(&id).is_ok());
        assert!(b.validate(&id).is_err());
        assert_ne!(a.generate_cid(), a.generate_cid());
    }

    #[test]
    fn a_group_binds_one_port_and_accepts_the_program() {
        let sockets = bind_group("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().expect("bound").port())
            .collect();
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0));
    }
}
