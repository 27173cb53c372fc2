//! Registry host names as every layer compares them.

/// Registry assumed when a reference names none, as docker does.
pub const DOCKER_HUB: &str = "docker.io";

/// Lower-cases a registry host and maps Docker Hub's aliases to `docker.io`; an IPv6
/// literal is written the canonical way (`[2001:DB8:0::1]` becomes `[2001:db8::1]`), so
/// the allow-list and credential lookups compare equal addresses equal.
pub fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((ip, after)) = rest.split_once(']') {
            if let Ok(ip) = ip.parse::<std::net::Ipv6Addr>() {
                return format!("[{ip}]{after}");
            }
        }
    }
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

/// Splits `host[:port]`; an IPv6 literal comes back without its brackets:
/// `[::1]:5000` gives `("::1", Some("5000"))`, `[::1]` gives `("::1", None)`.
pub fn split_host_port(host_port: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host_port.strip_prefix('[') {
        if let Some((ip, after)) = rest.split_once(']') {
            return (ip, after.strip_prefix(':'));
        }
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(split_host_port("reg:5000"), ("reg", Some("5000")));
        assert_eq!(split_host_port("reg"), ("reg", None));
        assert_eq!(split_host_port("[::1]:5000"), ("::1", Some("5000")));
        assert_eq!(split_host_port("[2001:db8::1]"), ("2001:db8::1", None));
        assert_eq!(normalise_host("[2001:DB8:0::1]:5000"), "[2001:db8::1]:5000");
        assert_eq!(normalise_host("Index.Docker.io"), DOCKER_HUB);
    }
}
