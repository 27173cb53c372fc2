//! The usual scene of a sync test: a source registry, an htpasswd target registry and
//! the service configured with both, all started at once.

use rand::distr::{Alphanumeric, SampleString};

use super::registry::{Creds, Registry};
use super::service::{Service, ServiceConfig};

/// A random password (`<prefix>-` plus 16 alphanumerics), distinctive enough to grep for.
pub fn random_password(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 16)
    )
}

/// How the source registry of a [`Pair`] is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAuth {
    /// Anyone may pull.
    Anonymous,
    /// htpasswd auth; the service gets the right credentials.
    Htpasswd,
}

/// Source registry, target registry (htpasswd) and the service that syncs between them.
pub struct Pair {
    /// Where images are pushed first.
    pub src: Registry,
    /// Where the service copies them; user `pusher` with a random password.
    pub dst: Registry,
    /// The service, with both registries in its config.
    pub service: Service,
}

impl Pair {
    /// Starts both registries, then the service with their real credentials.
    pub async fn start(source: SourceAuth) -> Pair {
        Self::start_with(source, |config, _, dst| config.registry("dst", dst)).await
    }

    /// Like [`Pair::start`], but `configure` adds the target's entry (or anything else)
    /// to a config that already holds the source registry.
    pub async fn start_with(
        source: SourceAuth,
        configure: impl FnOnce(ServiceConfig, &Registry, &Registry) -> ServiceConfig,
    ) -> Pair {
        let src_pass = random_password("src");
        let dst_pass = random_password("dst");
        let (src, dst) = tokio::join!(
            async {
                match source {
                    SourceAuth::Anonymous => Registry::start_anonymous().await,
                    SourceAuth::Htpasswd => Registry::start_htpasswd("puller", &src_pass).await,
                }
            },
            Registry::start_htpasswd("pusher", &dst_pass),
        );
        let config = configure(ServiceConfig::new().registry("src", &src), &src, &dst);
        let service = Service::start(&config).await;
        Pair { src, dst, service }
    }

    /// [`Pair::start_with`] with the service's jobs kept in `db`.
    pub async fn start_with_db(
        db: &super::postgres::JobDb,
        source: SourceAuth,
        configure: impl FnOnce(ServiceConfig, &Registry, &Registry) -> ServiceConfig,
    ) -> Pair {
        Self::start_with(source, |config, src, dst| {
            db.apply(configure(config, src, dst))
        })
        .await
    }

    /// `SRC_HOST/<reference>`.
    pub fn src_ref(&self, reference: &str) -> String {
        format!("{}/{reference}", self.src.host())
    }

    /// `DST_HOST/<reference>`.
    pub fn dst_ref(&self, reference: &str) -> String {
        format!("{}/{reference}", self.dst.host())
    }

    /// The target registry's real credentials.
    pub fn dst_creds(&self) -> Creds {
        self.dst
            .creds()
            .cloned()
            .expect("target registry uses htpasswd")
    }
}
