//! Where callbacks may go. `X-Callback-Url` comes from anyone who can reach the public async
//! route, so by default a callback may only reach public addresses: loopback, private,
//! link-local, carrier-grade NAT, multicast and reserved ranges (and their IPv4-mapped IPv6
//! forms) are refused unless the administrator allows them. [`CallbackPolicy::check_url`]
//! runs at accept time (literal addresses, `localhost`) and again before each delivery; the
//! callback client's DNS resolver ([`FilteredResolver`]) drops refused addresses, so a public
//! name resolving to 127.0.0.1 is refused at delivery too, and so are redirects to them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Which addresses callbacks may reach: public ones, plus what the administrator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// Any address, internal ones included.
    pub allow_private: bool,
    /// Internal networks callbacks may reach anyway.
    pub allowed: Vec<IpNet>,
}

/// Whether `ip` is loopback, private, link-local, CGNAT, multicast, reserved or unspecified.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 0                                      // 0.0.0.0/8 ("this network")
        || a == 10                              // 10/8
        || a == 127                             // loopback
        || (a == 100 && (64..128).contains(&b)) // 100.64/10, carrier-grade NAT
        || (a == 169 && b == 254)               // link-local (cloud metadata)
        || (a == 172 && (16..32).contains(&b))  // 172.16/12
        || (a == 192 && b == 168)               // 192.168/16
        || a >= 224 // multicast, reserved, broadcast
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d)
    // addresses reach the IPv4 address they embed.
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) && !(s[5] == 0 && s[6] == 0) {
        return internal_v4(embedded);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return internal_v4(embedded);
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xff00) == 0xff00 // multicast
}

/// The IPv4 address an IPv4-mapped IPv6 address stands for, else the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl CallbackPolicy {
    /// Whether a callback may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_private || !is_internal(ip) {
            return true;
        }
        let ip4 = canonical(ip);
        self.allowed
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&ip4))
    }

    /// Check a callback URL: absolute `http://` or `https://` with a host that is not a refused
    /// literal address or `localhost`. Names are checked again when they are resolved.
    pub fn check_url(&self, s: &str) -> Result<Url, String> {
        let url = Url::parse(s).map_err(|_| format!("{s:?} is not an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{s:?} is not an http:// or https:// URL"));
        }
        let refused = |what: &str| {
            format!(
                "{s:?} points at {what}, which callbacks may not reach (they go to public \
                 addresses only unless `virga up` allows more with --callback-allow-private \
                 or --callback-allow-cidr)"
            )
        };
        match url.host() {
            None => return Err(format!("{s:?} has no host")),
            Some(url::Host::Ipv4(ip)) if !self.permits(IpAddr::V4(ip)) => {
                return Err(refused(&format!("the internal address {ip}")))
            }
            Some(url::Host::Ipv6(ip)) if !self.permits(IpAddr::V6(ip)) => {
                return Err(refused(&format!("the internal address {ip}")))
            }
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                let local = d == "localhost" || d.ends_with(".localhost");
                if d.is_empty() {
                    return Err(format!("{s:?} has no host"));
                }
                if local && !self.permits(IpAddr::V4(Ipv4Addr::LOCALHOST)) {
                    return Err(refused("localhost"));
                }
            }
            Some(_) => {}
        }
        Ok(url)
    }
}

/// A DNS resolver for the callback client that drops the addresses the policy refuses.
pub(crate) struct FilteredResolver(pub(crate) Arc<CallbackPolicy>);

impl Resolve for FilteredResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if kept.is_empty() {
                let msg = if found.is_empty() {
                    format!("{host} has no addresses")
                } else {
                    format!(
                        "{host} resolves only to internal addresses, which callbacks may not reach"
                    )
                };
                return Err(msg.into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fdff::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(ip(s)), "{s} is internal");
        }
        for s in [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "fec0::1",
        ] {
            assert!(!is_internal(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn urls_to_internal_hosts_are_refused_unless_allowed() {
        let p = CallbackPolicy::default();
        for bad in [
            "http://127.0.0.1:9000/cb",
            "http://127.1/cb",
            "http://2130706433/cb",
            "http://0x7f000001/cb",
            "http://[::1]/cb",
            "http://[::ffff:127.0.0.1]/cb",
            "https://10.0.0.5/cb",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:8080/cb",
            "http://LocalHost./cb",
            "http://api.localhost/cb",
            "http://0.0.0.0:8080/",
        ] {
            let e = p.check_url(bad).unwrap_err();
            assert!(e.contains("--callback-allow-private"), "{bad}: {e}");
        }
        for bad in ["not a url", "/relative", "ftp://example.com/x", "http://"] {
            assert!(p.check_url(bad).is_err(), "{bad}");
        }
        assert!(p.check_url("https://example.com/cb?x=1").is_ok());
        assert!(p.check_url("http://93.184.216.34/cb").is_ok());
        let cidr = CallbackPolicy {
            allow_private: false,
            allowed: vec!["127.0.0.1/32".parse().unwrap()],
        };
        assert!(cidr.check_url("http://127.0.0.1:9/cb").is_ok());
        assert!(cidr.check_url("http://[::ffff:127.0.0.1]:9/cb").is_ok());
        assert!(cidr.check_url("http://localhost:9/cb").is_ok());
        assert!(cidr.check_url("http://127.0.0.2:9/cb").is_err());
        assert!(cidr.check_url("http://10.0.0.1/cb").is_err());
        let all = CallbackPolicy {
            allow_private: true,
            allowed: Vec::new(),
        };
        assert!(all.check_url("http://[::1]:9/cb").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses() {
        let r = FilteredResolver(Arc::new(CallbackPolicy::default()));
        let e = r.resolve("localhost".parse().unwrap()).await.err().unwrap();
        assert!(e.to_string().contains("internal addresses"), "{e}");
        let open = FilteredResolver(Arc::new(CallbackPolicy {
            allow_private: true,
            allowed: Vec::new(),
        }));
        let found: Vec<_> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }
}
