//! `[aggregator] address`: `host:port`, checked when `client.toml` is read.
//!
//! Why at load time: the transport resolves the address at every dial and
//! treats a resolution failure as retryable (DNS may be down for a while),
//! so an address without a port used to retry "cannot resolve" forever. A
//! malformed address is the operator's mistake, not the network's; it is
//! refused as a configuration error, which the TOML parser reports with a
//! caret under the value.

use serde::{Deserialize, Deserializer};

/// Deserialize `[aggregator] address`, refusing what is not `host:port`;
/// the error lands on the value, so the parser's message points at it.
pub(crate) fn host_port<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let address = String::deserialize(d)?;
    check_host_port(&address).map_err(serde::de::Error::custom)?;
    Ok(address)
}

/// Whether `address` is `host:port` with a non-zero port (an IPv6 literal
/// in brackets); the message says what is wrong and shows the fix.
pub(crate) fn check_host_port(address: &str) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let example = |host: &str| format!("write host:port, for example \"{host}:4433\"");
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("address {address:?} has no port: {}", example(address)));
    };
    let bare_v6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
    if bare_v6 || address.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "address {address:?}: an IPv6 address needs brackets and a port, for example \"[{}]:4433\"",
            address.trim_start_matches('[').trim_end_matches(']')
        ));
    }
    if host.is_empty() || host == "[]" {
        return Err(format!("address {address:?} has no host: {}", example("aggregator.example.org")));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("address {address:?}: port {port:?} is not a port number (1-65535): {}", example(host))),
    }
}

#[cfg(test)]
mod tests {
    use super::check_host_port;

    #[test]
    fn host_and_port_are_required() {
        for ok in ["127.0.0.1:4433", "aggregator.example.org:4433", "localhost:1", "[::1]:4433", "[2001:db8::1]:65535"]
        {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        let no_port = check_host_port("aggregator.example.org").unwrap_err();
        assert!(no_port.contains("has no port") && no_port.contains("\"aggregator.example.org:4433\""), "{no_port}");
        assert!(check_host_port("127.0.0.1").unwrap_err().contains("has no port"));
        assert!(check_host_port("::1").unwrap_err().contains("brackets"));
        assert!(check_host_port("2001:db8::1:4433").unwrap_err().contains("brackets"));
        assert!(check_host_port(":4433").unwrap_err().contains("no host"));
        for bad_port in ["host:", "host:0", "host:70000", "host:https"] {
            assert!(check_host_port(bad_port).unwrap_err().contains("not a port number"), "{bad_port}");
        }
    }
}
