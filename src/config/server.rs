//! `[server]`: the HTTP listener.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::Problem;

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Larger bodies are refused with 413. GitHub never sends more than 25 MiB.
    pub max_body_bytes: usize,
    /// A request that takes longer is answered 408. GitHub gives up after 10 s.
    pub request_timeout_secs: u64,
    pub rate_limit: RateLimitConfig,
    /// Peers whose `X-Forwarded-For` header is believed (load balancers, proxies).
    pub trusted_proxies: Vec<String>,
    /// Deprecated: GitHub's webhook's allow-list, now `github.allowed_networks` (each
    /// surface has its own: `codecommit.allowed_networks`, `api.allowed_networks`).
    pub allowed_networks: Vec<String>,
    /// Open connections at most; more are closed as they arrive. Kept well under the
    /// process's open-file limit, so that the listener can never take the descriptors
    /// the worker and the queue need.
    pub max_connections: usize,
    /// Open connections from one peer address at most (a peer listed in
    /// `trusted_proxies` is not limited: everyone is behind it).
    pub max_connections_per_address: usize,
    /// A request's headers must arrive whole within this time (a trickle is closed).
    pub header_timeout_secs: u64,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout_secs: u64,
    /// Bytes of request bodies held at once before their signature is checked, in all
    /// and from one address: what an unauthenticated client can make the process hold.
    pub max_unverified_bytes: usize,
    pub max_unverified_bytes_per_address: usize,
    /// Serve HTTPS with this certificate (reread on reload, so a renewed certificate
    /// needs no restart); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's own certificate first.
    pub cert: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 25 * 1024 * 1024,
            request_timeout_secs: 10,
            rate_limit: RateLimitConfig::default(),
            trusted_proxies: Vec::new(),
            allowed_networks: Vec::new(),
            max_connections: 512,
            max_connections_per_address: 32,
            header_timeout_secs: 5,
            idle_timeout_secs: 60,
            max_unverified_bytes: 128 * 1024 * 1024,
            max_unverified_bytes_per_address: 32 * 1024 * 1024,
            tls: None,
        }
    }
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// Per-client-address request rate limit (`[server.rate_limit]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second from one address.
    pub per_second: u32,
    /// Requests one address may make at once before the sustained rate applies.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 50,
            burst: 200,
        }
    }
}

/// Parses `10.0.0.0/8` or a single address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))
}

impl ServerConfig {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        for (key, value) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("request_timeout_secs", self.request_timeout_secs),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_address",
                self.max_connections_per_address as u64,
            ),
            ("header_timeout_secs", self.header_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            (
                "rate_limit.per_second",
                u64::from(self.rate_limit.per_second),
            ),
            ("rate_limit.burst", u64::from(self.rate_limit.burst)),
        ] {
            if value == 0 {
                problems.push(Problem::new(format!("server.{key}"), "must be above 0"));
            }
        }
        if self.max_unverified_bytes_per_address < self.max_body_bytes {
            problems.push(Problem::new(
                "server.max_unverified_bytes_per_address",
                "must be at least server.max_body_bytes, or a delivery of the largest size allowed could never be read",
            ));
        }
        if self.max_unverified_bytes < self.max_unverified_bytes_per_address {
            problems.push(Problem::new(
                "server.max_unverified_bytes",
                "must be at least server.max_unverified_bytes_per_address",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_as_cidr_or_address() {
        assert!(parse_network("10.0.0.0/8").is_ok());
        assert!(parse_network("192.0.2.1").is_ok());
        assert!(parse_network("::1").is_ok());
        assert!(parse_network("nope").is_err());
    }
}
