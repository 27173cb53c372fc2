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
