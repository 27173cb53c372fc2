//! The completion webhook: when a job that asked for one ends, its record is POSTed to
//! the caller's `callback_url`, retried with backoff, never with credentials.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Url;

use super::model::{CallbackStatus, JobRecord};
use crate::config::checks::{parse_allowed_host, AllowedHost};

/// Attempts per delivery.
const ATTEMPTS: u32 = 4;
/// Wait before the second attempt; doubles after each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Time allowed for one attempt, answer included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted URL.
const MAX_URL_LEN: usize = 2048;

/// Checks a `callback_url` before a job is created, so a bad one is a 400, not a
/// delivery failure minutes later.
pub fn check_callback_url(text: &str) -> Result<Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!(
            "callback_url is longer than {MAX_URL_LEN} characters"
        ));
    }
    let url = Url::parse(text).map_err(|e| {
        format!("callback_url {text:?} is not a URL ({e}): send http(s)://host/path")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "callback_url must use http or https, not {:?}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // The webhook never carries credentials; refusing is clearer than dropping them.
        return Err("callback_url must not contain a user name or password: the webhook is sent without credentials".into());
    }
    if url.host().is_none() {
        return Err("callback_url has no host".into());
    }
    Ok(url)
}

/// Which internal addresses a callback may reach: none but those listed in
/// `rsyncserver.jobs.callback_allowed_hosts`. Public addresses are always allowed.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    allowed: Vec<AllowedHost>,
}

impl CallbackPolicy {
    /// The policy of `callback_allowed_hosts` (entries already checked with the config;
    /// an unparsable one allows nothing).
    pub fn new(entries: &[String]) -> Self {
        Self {
            allowed: entries
                .iter()
                .filter_map(|e| parse_allowed_host(e).ok())
                .collect(),
        }
    }

    /// Resolves the URL's host and returns its addresses when every one of them is public
    /// or listed; otherwise says why not. Asked when the job is submitted and again just
    /// before delivery, whose connection then goes to exactly these addresses: a name
    /// that resolves inside later (DNS rebinding) is refused, never called.
    pub async fn admit(&self, url: &Url) -> Result<Vec<SocketAddr>, String> {
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("callback_url host {host} does not resolve: {e}"))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("callback_url host {host} has no address"));
        }
        for addr in &addrs {
            let ip = addr.ip();
            let internal = crate::registry::is_internal(&ip);
            if internal && !self.allowed.iter().any(|a| a.covers(&host, port, ip)) {
                return Err(format!(
                    "callback_url host {host} resolves to {ip}, an internal (loopback, link-local or private) address: list the host, host:port or its network in rsyncserver.jobs.callback_allowed_hosts to allow it"
                ));
            }
        }
        Ok(addrs)
    }
}

/// Sends completion webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    first_backoff: Duration,
    policy: CallbackPolicy,
}

impl Default for WebhookSender {
    fn default() -> Self {
        Self::new(FIRST_BACKOFF, CallbackPolicy::default())
    }
}

impl WebhookSender {
    /// A sender waiting `first_backoff` before its first retry (tests shorten it), which
    /// calls internal addresses only as `policy` allows.
    pub fn new(first_backoff: Duration, policy: CallbackPolicy) -> Self {
        Self {
            first_backoff,
            policy,
        }
    }

    /// The policy callbacks are checked against.
    pub fn policy(&self) -> &CallbackPolicy {
        &self.policy
    }

    /// POSTs `job` to its `callback_url` until it answers 2xx or the attempts are spent.
    /// A host that now resolves to an address the policy refuses is not called; the
    /// status says `refused`.
    pub async fn deliver(&self, job: &JobRecord) -> Option<CallbackStatus> {
        let url = check_callback_url(job.callback_url.as_deref()?).ok()?;
        let mut status = CallbackStatus::default();
        let addrs = match self.policy.admit(&url).await {
            Ok(addrs) => addrs,
            Err(why) => {
                tracing::warn!(job = job.id, reason = %why, "webhook refused");
                status.refused = true;
                status.last_error = Some(format!("refused: {why}"));
                return Some(status);
            }
        };
        let mut builder = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A redirect could carry the body somewhere the caller did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::registry::USER_AGENT);
        if let Some(host) = url.host_str().filter(|_| url.domain().is_some()) {
            // Connect to the addresses just checked, not to a fresh lookup's answer.
            builder = builder.resolve_to_addrs(host, &addrs);
        }
        let http = match builder.build() {
            Ok(http) => http,
            Err(e) => {
                status.last_error = Some(e.to_string());
                return Some(status);
            }
        };
        let mut wait = self.first_backoff;
        while status.attempts < ATTEMPTS {
            status.attempts += 1;
            let sent = http
                .post(url.clone())
                .header("X-Imagersync-Job", job.id.to_string())
                .json(job)
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().is_success() => {
                    status.delivered = true;
                    status.last_error = None;
                    break;
                }
                Ok(answer) => status.last_error = Some(format!("HTTP {}", answer.status())),
                Err(e) => {
                    status.last_error = Some(crate::registry::describe_transport_error(&e));
                }
            }
            if status.attempts < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        if status.delivered {
            tracing::info!(
                job = job.id,
                attempts = status.attempts,
                "webhook delivered"
            );
        } else {
            tracing::warn!(
                job = job.id,
                host = url.host_str().unwrap_or(""),
                attempts = status.attempts,
                error = status.last_error.as_deref().unwrap_or(""),
                "webhook not delivered"
            );
        }
        Some(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_are_checked() {
        assert!(check_callback_url("https://ci.example.com/hook?x=1").is_ok());
        assert!(check_callback_url("http://10.0.0.5:8080/hook").is_ok());
        for (bad, why) in [
            ("ftp://ci.example.com/hook", "http or https"),
            ("https://user:pw@ci.example.com/hook", "without credentials"),
            ("not a url", "is not a URL"),
            (
                &format!("https://a.example.com/{}", "x".repeat(3000)) as &str,
                "longer than",
            ),
        ] {
            let err = check_callback_url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
