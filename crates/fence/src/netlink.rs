//! Removing a floating address over rtnetlink (`RTM_DELADDR`), the kernel's own
//! interface: no `ip` process to fork and exec at the moment the fence fires, so the
//! address goes even when `PATH` has no iproute2, the process table is full or the
//! disk that holds `ip` hangs.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What became of an address the fence removed.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// It was there and is gone.
    Removed,
    /// The interface or the address was not there (nothing to do).
    WasNotThere,
}

/// Why an address could not be removed.
#[derive(Debug)]
pub enum RemovalError {
    /// `addr/prefix` is not an address with a prefix length.
    BadAddress(String),
    /// The netlink socket failed or the kernel refused.
    Netlink(std::io::Error),
}

impl std::fmt::Display for RemovalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadAddress(a) => write!(f, "`{a}` is not an address/prefix"),
            Self::Netlink(e) => write!(f, "netlink: {e}"),
        }
    }
}

/// Parses `10.0.0.5/24` or `fd00::5/64`.
fn parse(address: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = address.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// Removes `address` (`addr/prefix`) from `interface`, as `ip addr del` would, and
/// waits for the kernel's answer (at most one second).
///
/// # Errors
/// A malformed address, a netlink socket that cannot be opened, or a refusal other
/// than "not there".
pub fn remove_address(interface: &str, address: &str) -> Result<Removal, RemovalError> {
    let (ip, prefix_len) =
        parse(address).ok_or_else(|| RemovalError::BadAddress(address.to_owned()))?;
    let Ok(index) = nix::net::if_::if_nametoindex(interface) else {
        return Ok(Removal::WasNotThere);
    };
    let mut message = AddressMessage::default();
    message.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    message.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::DelAddress(message)),
    );
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);

    let socket = Socket::new(NETLINK_ROUTE).map_err(RemovalError::Netlink)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(RemovalError::Netlink)?;
    set_receive_timeout(&socket).map_err(RemovalError::Netlink)?;
    socket.send(&buf, 0).map_err(RemovalError::Netlink)?;
    let mut answer = vec![0u8; 8192];
    loop {
        let n = socket
            .recv(&mut &mut answer[..], 0)
            .map_err(RemovalError::Netlink)?;
        let mut offset = 0;
        while offset < n {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[offset..n])
                .map_err(|e| RemovalError::Netlink(std::io::Error::other(e.to_string())))?;
            let length = reply.header.length as usize;
            if let NetlinkPayload::Error(e) = reply.payload {
                return match e.code {
                    None => Ok(Removal::Removed),
                    Some(code) if -code.get() == nix::libc::EADDRNOTAVAIL => {
                        Ok(Removal::WasNotThere)
                    }
                    Some(_) => Err(RemovalError::Netlink(e.to_io())),
                };
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// One second at most for the kernel's answer: the fence's loop must not hang on it.
fn set_receive_timeout(socket: &Socket) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_prefixes_parse_and_others_are_refused() {
        assert_eq!(
            parse("10.0.0.5/24"),
            Some(("10.0.0.5".parse().unwrap(), 24))
        );
        assert_eq!(parse("fd00::5/64"), Some(("fd00::5".parse().unwrap(), 64)));
        assert_eq!(parse("10.0.0.5"), None);
        assert_eq!(parse("10.0.0.5/33"), None);
        assert!(matches!(
            remove_address("lo", "junk/8"),
            Err(RemovalError::BadAddress(_))
        ));
    }

    #[test]
    fn a_missing_interface_has_nothing_to_remove() {
        assert_eq!(
            remove_address("quorate-none0", "10.0.0.5/24").unwrap(),
            Removal::WasNotThere
        );
    }
}
