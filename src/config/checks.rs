//! Checks of single config values that the layers above also rely on: service-user
//! password entries, scope prefixes and platform patterns. Plain functions on strings,
//! so config validation and the HTTP and engine layers share one definition.

use super::names::normalise_host;

/// Prefixes of the bcrypt hashes accepted in `rsyncserver.auth` (`htpasswd -B` writes `$2y$`).
const BCRYPT_PREFIXES: [&str; 3] = ["$2a$", "$2b$", "$2y$"];
/// The cost range bcrypt accepts.
const BCRYPT_MIN_COST: u32 = 4;
const BCRYPT_MAX_COST: u32 = 31;

/// True when a configured password is to be read as a bcrypt hash.
pub fn is_bcrypt_hash(password: &str) -> bool {
    BCRYPT_PREFIXES.iter().any(|p| password.starts_with(p))
}

/// Checks one `rsyncserver.auth` password at config load: a value with a bcrypt prefix
/// must be a whole, usable bcrypt hash (a truncated copy-paste would otherwise lock the
/// user out without a word).
pub fn check_password_entry(password: &str) -> Result<(), String> {
    if !is_bcrypt_hash(password) {
        return Ok(());
    }
    let parts: bcrypt::HashParts = password.parse().map_err(|e| {
        format!("starts like a bcrypt hash ($2a$/$2b$/$2y$) but is not one ({e}); paste the whole output of `htpasswd -nbB user password` after the colon")
    })?;
    let cost = parts.get_cost();
    if !(BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside {BCRYPT_MIN_COST}..={BCRYPT_MAX_COST}"
        ));
    }
    Ok(())
}

/// A credential helper suffix: `docker-credential-NAME` must be a plain file name, so
/// no path, no shell characters.
pub fn check_helper_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a helper name: give the part after docker-credential- (letters, digits, '-', '_', '.'), e.g. ecr-login"
        ))
    }
}

/// Turns a configured prefix into the form names are compared in; the error says what
/// is wrong with it (config validation names the key).
pub fn normalise_prefix(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("empty prefix: write registry[/path], e.g. reg.example.com/team".into());
    }
    if raw.contains("://") {
        return Err(format!(
            "{raw:?}: write registry[/path] without a scheme such as https://"
        ));
    }
    if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{raw:?} contains {c:?}: a prefix is printable ASCII"
        ));
    }
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    let (host, path) = match trimmed.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (trimmed, None),
    };
    let looks_like_host =
        host.contains('.') || host.contains(':') || host.eq_ignore_ascii_case("localhost");
    if !looks_like_host {
        return Err(format!(
            "{raw:?} does not start with a registry host: write e.g. reg.example.com/team \
             (Docker Hub is docker.io/…, its official images docker.io/library/…)"
        ));
    }
    let host_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        return Err(format!(
            "{raw:?}: the registry host may hold only letters, digits, '.', '-' and :port"
        ));
    }
    let mut normalised = normalise_host(host);
    if let Some(path) = path {
        for component in path.split('/') {
            let valid = !component.is_empty()
                && component != "."
                && component != ".."
                && component.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                });
            if !valid {
                return Err(format!(
                    "{raw:?}: after the host, a prefix is repository path components \
                     (lower-case letters, digits, '.', '_', '-'), without tag or digest"
                ));
            }
        }
        normalised.push('/');
        normalised.push_str(path);
    }
    Ok(normalised)
}

/// One `os/arch[/variant]` pattern; `None` in a part matches anything.
pub type PlatformPattern = [Option<String>; 3];

/// Parses `os/arch[/variant]` patterns, where `*` or an empty part matches anything.
pub fn parse_platform_patterns(patterns: &[String]) -> Result<Vec<PlatformPattern>, String> {
    let mut parsed = Vec::new();
    for p in patterns {
        let parts: Vec<&str> = p.trim().split('/').collect();
        let valid_part = |s: &&str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"*_.-".contains(&b))
        };
        if parts.len() > 3 || p.trim().is_empty() || !parts.iter().all(valid_part) {
            return Err(format!(
                "platform {p:?} must look like os/arch or os/arch/variant, e.g. linux/arm64"
            ));
        }
        let part = |i: usize| {
            parts
                .get(i)
                .filter(|s| !s.is_empty() && **s != "*")
                .map(|s| s.to_string())
        };
        parsed.push([part(0), part(1), part(2)]);
    }
    Ok(parsed)
}

/// The patterns of the config's `task.os` × `task.arch` lists (`arch` may hold a
/// variant); empty when both leave every platform in.
pub fn task_platform_patterns(os: &[String], arch: &[String]) -> Vec<String> {
    let any = vec![String::from("*")];
    let os = if os.is_empty() { &any } else { os };
    let arch = if arch.is_empty() { &any } else { arch };
    if *os == any && *arch == any {
        return Vec::new();
    }
    os.iter()
        .flat_map(|o| arch.iter().map(move |a| format!("{o}/{a}")))
        .collect()
}

/// One entry of `rsyncserver.jobs.callback_allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// A host name or address, any port (lower case; an IPv6 address without brackets).
    Host(String),
    /// A host name or address at one port.
    HostPort(String, u16),
    /// Every address of a network.
    Network(std::net::IpAddr, u8),
}

impl AllowedHost {
    /// Whether a callback to `host` (lower case, no brackets) at `port`, resolved to
    /// `ip`, is covered by this entry.
    pub fn covers(&self, host: &str, port: u16, ip: std::net::IpAddr) -> bool {
        match self {
            AllowedHost::Host(h) => h == host || h.parse() == Ok(ip),
            AllowedHost::HostPort(h, p) => *p == port && (h == host || h.parse() == Ok(ip)),
            AllowedHost::Network(net, bits) => in_network(ip, *net, *bits),
        }
    }
}

fn in_network(ip: std::net::IpAddr, net: std::net::IpAddr, bits: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(ip), V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (V6(ip), V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        (V6(ip), V4(_)) => ip
            .to_ipv4_mapped()
            .is_some_and(|v4| in_network(v4.into(), net, bits)),
        (V4(_), V6(_)) => false,
    }
}

/// Parses a `callback_allowed_hosts` entry: `name`, `name:port`, `10.0.0.0/8`,
/// `[fd00::1]:8080`, `fd00::/8`.
pub fn parse_allowed_host(raw: &str) -> Result<AllowedHost, String> {
    let entry = raw.trim().to_ascii_lowercase();
    if entry.is_empty() {
        return Err("empty entry: give a host name, host:port or a CIDR range".into());
    }
    if let Some((net, bits)) = entry.split_once('/') {
        let net: std::net::IpAddr = net
            .parse()
            .map_err(|_| format!("{raw:?}: {net:?} before the '/' is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{raw:?}: the prefix length must be 0 to {max}"))?;
        return Ok(AllowedHost::Network(net, bits));
    }
    if entry.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(AllowedHost::Host(entry));
    }
    let (host, port) = super::names::split_host_port(&entry);
    let valid_host = host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !valid_host {
        return Err(format!(
            "{raw:?} is not a host name, host:port or CIDR range"
        ));
    }
    match port {
        None => Ok(AllowedHost::Host(host.to_owned())),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| AllowedHost::HostPort(host.to_owned(), p))
            .ok_or_else(|| format!("{raw:?}: port {p:?} is not a number from 1 to 65535")),
    }
}

/// Checks a `postgres://user:password@host:port/db` job database URL: a host and a database
/// name are required; `sslmode`, if given, must be one PostgreSQL knows. The driver parses
/// it again at start-up; this catches typos at load with the key's name.
pub fn check_postgres_url(raw: &str) -> Result<(), String> {
    let hint = "write postgres://user:password@host:port/database (percent-encode special characters of the password)";
    let url = reqwest::Url::parse(raw)
        .map_err(|e| format!("not a valid PostgreSQL URL ({e}): {hint}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the PostgreSQL URL names no host: {hint}"));
    }
    let database = url.path().trim_start_matches('/');
    if database.is_empty() || database.contains('/') {
        return Err(format!("the PostgreSQL URL names no database: {hint}"));
    }
    for (key, value) in url.query_pairs() {
        let known = [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ];
        if key == "sslmode" && !known.contains(&value.as_ref()) {
            return Err(format!(
                "sslmode={value} is not one of {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}
