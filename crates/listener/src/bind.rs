//! Listening sockets for the configured addresses. An IPv6 socket on a port that an IPv4
//! listener also uses gets `IPV6_V6ONLY`, so `0.0.0.0:25` and `[::]:25` can be listened on
//! side by side (as Postfix's `inet_protocols = all` does; with Debian's default
//! `net.ipv6.bindv6only = 0` the second bind would fail with "address in use"). An IPv6
//! listener alone stays dual-stack: its IPv4 clients arrive as `::ffff:a.b.c.d` and are
//! unmapped at accept ([`crate::limits::unmapped`]).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// The queue of connections not yet accepted.
const BACKLOG: i32 = 1024;

/// Binds `address`, one of `all` the listeners' addresses, ready for tokio
/// (`tokio::net::TcpListener::from_std`).
pub fn bind(address: SocketAddr, all: &[SocketAddr]) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = address {
        socket.set_only_v6(v6only(address, all) && v6.ip().to_ipv4_mapped().is_none())?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether the IPv6 listener on `address` must leave IPv4 to an IPv4 listener on its port.
fn v6only(address: SocketAddr, all: &[SocketAddr]) -> bool {
    address.is_ipv6()
        && all
            .iter()
            .any(|other| other.is_ipv4() && other.port() == address.port() && address.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_wildcards_share_a_port_and_an_ipv6_socket_alone_takes_ipv4_too() {
        // Loopback versions of the shipped `0.0.0.0:25` and `[::]:25`: the same rule, decided
        // by the other listeners on the port.
        let v4: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let v6: SocketAddr = "[::1]:2525".parse().unwrap();
        assert!(v6only(v6, &[v4, v6]));
        assert!(!v6only(v6, &[v6]));
        assert!(!v6only(v4, &[v4, v6]));
        // An IPv6 socket on the IPv4-mapped loopback: IPv4 clients of 127.0.0.1 reach it.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
        let listener = bind(mapped, &[mapped]).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(
            peer.ip(),
            "::ffff:127.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            crate::limits::unmapped(peer.ip()),
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
        drop(client);
    }
}
