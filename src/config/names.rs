//! Registry host names as every layer compares them.

/// Registry assumed when a reference names none, as docker does.
pub const DOCKER_HUB: &str = "docker.io";

/// Lower-cases a registry host and maps Docker Hub's aliases to `docker.io`.
pub fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}
