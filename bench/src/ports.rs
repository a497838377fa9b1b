//! Loopback ports for the store clusters the benchmarks start.
use std::net::TcpListener;

/// A member's client and peer ports.
#[derive(Debug, Clone, Copy)]
pub struct MemberPorts {
    pub client: u16,
    pub peer: u16,
}

/// Client and peer ports for `n` members, all distinct: every port stays bound until all are
/// chosen, so two members (of either cluster) never get the same one.
pub fn member_ports(n: usize) -> anyhow::Result<Vec<MemberPorts>> {
    let listeners = (0..n * 2)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let numbers = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<anyhow::Result<Vec<u16>>>()?;
    Ok(numbers
        .chunks(2)
        .map(|pair| MemberPorts {
            client: pair[0],
            peer: pair[1],
        })
        .collect())
}
