//! The completion webhook: when a job that asked for one ends, its record is POSTed to
//! the caller's `callback_url`, retried with backoff, never with credentials.

use std::time::Duration;

use reqwest::Url;

use super::model::{CallbackStatus, JobRecord};

/// Attempts per delivery.
const ATTEMPTS: u32 = 4;
/// Wait before the second attempt; doubles after each failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
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

/// Sends completion webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    first_backoff: Duration,
}

impl Default for WebhookSender {
    fn default() -> Self {
        Self::new(FIRST_BACKOFF)
    }
}

impl WebhookSender {
    /// A sender waiting `first_backoff` before its first retry (tests shorten it).
    pub fn new(first_backoff: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A redirect could carry the body somewhere the caller did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("imagersync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("webhook client builds");
        Self {
            http,
            first_backoff,
        }
    }

    /// POSTs `job` to its `callback_url` until it answers 2xx or the attempts are spent.
    pub async fn deliver(&self, job: &JobRecord) -> Option<CallbackStatus> {
        let url = check_callback_url(job.callback_url.as_deref()?).ok()?;
        let mut status = CallbackStatus::default();
        let mut wait = self.first_backoff;
        while status.attempts < ATTEMPTS {
            status.attempts += 1;
            let sent = self
                .http
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
