//! The `--target` URL and the loopback guard.
//!
//! This tool may only put load on the machine it runs on. The guard works on
//! the literal text of the URL and never asks a resolver: a name such as
//! `127.0.0.1.example.com` could resolve anywhere, so every host name other
//! than `localhost` is refused, and `localhost` itself is pinned to
//! `127.0.0.1` rather than looked up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where the load goes: a loopback socket address, and the `Host` header to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` exactly as the user wrote it (HTTP/1.1 requires a `Host` header).
    pub host_header: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "--target {0:?}: only plain http:// is supported (no TLS), e.g. http://127.0.0.1:8080"
    )]
    Scheme(String),
    #[error("--target {0:?}: expected http://HOST[:PORT] with no path, user or query, e.g. http://127.0.0.1:8080")]
    Malformed(String),
    #[error("--target {url:?}: host {host:?} is not a loopback address; cascade-load only sends load to this machine (127.0.0.0/8, localhost or [::1])")]
    NotLoopback { url: String, host: String },
}

impl Target {
    /// Parses `http://HOST[:PORT][/]` and refuses any host that is not loopback.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let malformed = || TargetError::Malformed(url.to_string());
        let lower = url.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &url["http://".len()..]
        } else if lower.contains("://") {
            return Err(TargetError::Scheme(url.to_string()));
        } else {
            return Err(malformed());
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
            return Err(malformed());
        }

        let (host, port) = split_host_port(authority).ok_or_else(malformed)?;
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(malformed()),
            },
        };
        let ip = loopback_ip(host).ok_or_else(|| TargetError::NotLoopback {
            url: url.to_string(),
            host: host.to_string(),
        })?;
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host_header: authority.to_string(),
        })
    }
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`; the host keeps no brackets.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(after) = authority.strip_prefix('[') {
        let (host, tail) = after.split_once(']')?;
        return match tail {
            "" => Some((host, None)),
            t => Some((host, Some(t.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        None => Some((authority, None)),
        Some((_, p)) if p.contains(':') => None, // a bare IPv6 address needs brackets
        Some((h, p)) => Some((h, Some(p))),
    }
}

/// The loopback address `host` names, or `None` when it names anything else.
fn loopback_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // Only canonical literals parse here ("127.1" or "0x7f.0.0.1" do not),
    // so nothing ambiguous reaches the network.
    let ip: IpAddr = host.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_targets() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(
            Target::parse("http://127.10.20.30:9/").unwrap().addr,
            "127.10.20.30:9".parse().unwrap()
        );
        assert_eq!(
            Target::parse("HTTP://LocalHost:18181").unwrap().addr,
            "127.0.0.1:18181".parse().unwrap()
        );
        assert_eq!(
            Target::parse("http://[::1]:8080").unwrap().addr,
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(Target::parse("http://localhost").unwrap().addr.port(), 80);
    }

    #[test]
    fn refuses_other_hosts_with_a_clear_error() {
        for url in [
            "http://10.0.0.1:8080",
            "http://0.0.0.0:8080",
            "http://192.168.1.5",
            "http://example.com:8080",
            "http://127.0.0.1.nip.io:8080",
            "http://localhost.example.com",
            "http://[::ffff:127.0.0.1]:8080",
            "http://[2001:db8::1]:80",
            "http://127.1:8080",
        ] {
            match Target::parse(url) {
                Err(TargetError::NotLoopback { .. }) => {}
                other => panic!("{url}: expected NotLoopback, got {other:?}"),
            }
        }
        let msg = Target::parse("http://10.1.2.3:80").unwrap_err().to_string();
        assert!(msg.contains("not a loopback address"), "{msg}");
        assert!(msg.contains("10.1.2.3"), "{msg}");
    }

    #[test]
    fn refuses_malformed_and_tls_targets() {
        assert!(matches!(
            Target::parse("https://127.0.0.1:8443"),
            Err(TargetError::Scheme(_))
        ));
        for url in [
            "127.0.0.1:8080",
            "http://",
            "http://127.0.0.1:8080/v1/rank",
            "http://user@127.0.0.1:8080",
            "http://127.0.0.1:0",
            "http://127.0.0.1:99999",
            "http://::1:8080",
        ] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::Malformed(_))),
                "{url}"
            );
        }
    }
}
