//! The Docker credential helper protocol (docker/docker-credential-helpers): run
//! `docker-credential-NAME get`, server URL on stdin, JSON `{Username, Secret}` on stdout.
//!
//! Written here rather than with the `docker_credential` crate because that one blocks,
//! has no time limit and puts the helper's output into its error text.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::Login;
use crate::secret::Secret;

/// The helper's answer on success.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: Secret,
}

/// The standard "nothing stored for this server" message: anonymous access, not an error.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// Longest piece of a helper's error output kept in an error message.
const MAX_MESSAGE: usize = 300;

/// Asks helper `name` for `server`'s login; `Ok(None)` when it has none. Errors say which
/// helper failed and how, with its error output (never its answer, which holds the secret).
pub(super) async fn get(
    name: &str,
    server: &str,
    timeout: Duration,
) -> Result<Option<Login>, String> {
    let program = format!("docker-credential-{name}");
    // No shell: the name was checked to be a plain file name, found through PATH.
    run(std::path::Path::new(&program), &program, server, timeout).await
}

/// Runs helper `executable` (shown as `program`) for `server`.
async fn run(
    executable: &std::path::Path,
    program: &str,
    server: &str,
    timeout: Duration,
) -> Result<Option<Login>, String> {
    let mut child = Command::new(executable)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "credential helper {program} is not on PATH: install it (or fix credential_helper / credHelpers)"
            ),
            _ => format!("cannot run credential helper {program}: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading closes the pipe; its exit status tells.
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("credential helper {program}: {e}")),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => {
            return Err(format!(
            "credential helper {program} gave no answer within {}s for {server}; it was stopped",
            timeout.as_secs()
        ))
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Helpers print their error to stdout (docker-credential-helpers' convention).
        if stdout.trim() == NOT_FOUND {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = [stdout.trim(), stderr.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "credential helper {program} failed for {server} ({}): {}",
            output.status,
            clip(&message)
        ));
    }
    let answer: Answer = serde_json::from_slice(&output.stdout).map_err(|e| {
        // serde's message quotes no input beyond a position, so no secret leaks here.
        format!("credential helper {program} answered something that is not its JSON: {e}")
    })?;
    if answer.secret.expose().is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Login::IdentityToken(answer.secret)
    } else {
        Login::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}

/// At most [`MAX_MESSAGE`] characters of a helper's message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Writes `docker-credential-NAME` into a fresh dir; returns the dir and the name.
    fn script(body: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("unit{}", std::process::id());
        let path = dir.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, name)
    }

    #[tokio::test]
    async fn answers_of_a_helper() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            (
                r#"read s; printf '{"ServerURL":"%s","Username":"u","Secret":"pw"}' "$s""#,
                Ok("username: u"),
            ),
            (
                r#"printf '{"Username":"<token>","Secret":"refresh"}'"#,
                Ok("identity token"),
            ),
            (
                "echo 'credentials not found in native keychain'; exit 1",
                Ok("anonymous"),
            ),
            ("echo 'boom' >&2; exit 3", Err("boom")),
            ("echo notjson", Err("not its JSON")),
            ("sleep 30", Err("no answer within 1s")),
        ];
        for (body, want) in cases {
            let (dir, name) = script(body);
            let program = format!("docker-credential-{name}");
            let exe = dir.path().join(&program);
            let got = run(&exe, &program, "reg.example.com", Duration::from_secs(1)).await;
            match (got, want) {
                (Ok(login), Ok(kind)) => {
                    assert_eq!(login.unwrap_or(Login::Anonymous).kind(), *kind, "{body}")
                }
                (Err(e), Err(needle)) => {
                    assert!(e.contains(needle), "{body}: {e}");
                    assert!(e.contains(&program), "{e}");
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
        let missing = get("surely-not-installed-xyz", "r", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(missing.contains("not on PATH"), "{missing}");
    }
}
