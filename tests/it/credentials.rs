//! Registry logins as operators keep them (issue 12): credential helpers, password files,
//! Docker / containers auth files, identity tokens, and logins that expire mid-sync.
//!
//! Real parts throughout: `docker-registry` in htpasswd and token mode, the in-suite token
//! issuer as its auth server, and a `docker-credential-<name>` shell script speaking the
//! real helper protocol. Where ECR's 403 "token has expired" is needed, the fault proxy
//! answers it in front of a real registry (no packaged registry says it).

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::Value;

use crate::common::contract::{assert_no_secrets_anywhere, error_of, info_of, status_of};
use crate::common::cred_helper::CredHelper;
use crate::common::fault_proxy::{FaultProxy, Reply, Rule};
use crate::common::service::admin;
use crate::common::{skopeo, Creds, Format, Image, Registry, Service, TokenIssuer};

const KIB: usize = 1024;

/// The `rsyncserver:` body: service user admin, the given `rsyncconfig.auth` entries
/// (`name: {registry: HOST, insecure: true, <extra>}`) and optional `auth_file`.
fn config(entries: &[(&str, String, &str)], auth_file: Option<&std::path::Path>) -> String {
    let mut yaml = String::from("  auth: {admin: adminpw}\n  rsyncconfig:\n");
    if let Some(file) = auth_file {
        yaml.push_str(&format!("    auth_file: {}\n", file.display()));
    }
    yaml.push_str("    task: {retries: 2, credential_helper_timeout_seconds: 2}\n    auth:\n");
    for (name, host, extra) in entries {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        yaml.push_str(&format!(
            "      {name}: {{registry: \"{host}\", insecure: true{extra}}}\n"
        ));
    }
    yaml
}

/// Every place a secret could leak to: the answers given, the service's own log, the
/// analysis log, the job list and the metrics.
async fn assert_nothing_leaks(service: &Service, answers: &[&Value], secrets: &[String]) {
    let (_, jobs) = service
        .call_json(Method::GET, "/v1/image/rsync/jobs", &admin())
        .await;
    let metrics = service
        .client()
        .get(service.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let mut places = vec![
        ("service stdout", service.stdout()),
        ("service stderr", service.stderr()),
        ("analysis log", service.logfile_text()),
        ("job list", jobs.to_string()),
        ("metrics", metrics),
    ];
    for answer in answers {
        places.push(("sync answer", answer.to_string()));
    }
    assert_no_secrets_anywhere(&places, secrets);
}

/// Source image in `src` under `repo:tag`, synced to `dst`; returns the answer.
async fn sync_one(service: &Service, src: &str, dst: &str, repo_tag: &str) -> Value {
    let (_, body) = service
        .sync(&format!("{src}/{repo_tag}"), &format!("{dst}/{repo_tag}"))
        .await;
    body
}

/// A service whose entry `src` (at `src`) logs in through `helper`, and `dst` anonymous.
async fn start_with_helper(src: &str, dst: &str, helper: &CredHelper) -> Service {
    let yaml = config(
        &[
            (
                "src",
                src.to_owned(),
                &format!("credential_helper: {}", helper.name()),
            ),
            ("dst", dst.to_owned(), ""),
        ],
        None,
    );
    Service::start_raw_env(&yaml, &[helper.path_env()]).await
}

fn assert_synced(body: &Value) {
    assert_eq!(status_of(body), "successfully", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn helper_login_is_cached_and_asked_again_after_a_rotation() {
    let mut src = Registry::start_htpasswd("puller", "first-Pw-71").await;
    let dst = Registry::start_anonymous().await;
    let helper = CredHelper::install("itrotate");
    helper.answer("puller", "first-Pw-71");
    let one = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let two = src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let service = start_with_helper(&src.host(), &dst.host(), &helper).await;

    let first = sync_one(&service, &src.host(), &dst.host(), "team/app:v1").await;
    assert_synced(&first);
    assert!(
        info_of(&first).contains(&format!(
            "Find auth information for {}/team/app:v1: entry src, credential helper docker-credential-itrotate",
            src.host()
        )),
        "{}",
        info_of(&first)
    );
    assert_eq!(helper.calls(), 1);
    assert_eq!(
        helper.servers(),
        vec![src.host()],
        "asked for the bare host"
    );

    // Within the cache time a second sync reuses the answer.
    let second = sync_one(&service, &src.host(), &dst.host(), "team/app:v2").await;
    assert_synced(&second);
    assert_eq!(
        helper.calls(),
        1,
        "the helper's answer is shared by every sync"
    );
    skopeo::assert_landed(&dst, "team/app:v2", &two).await;

    // Rotation: the registry takes only the new password and the helper hands it out.
    // The cached login gets a 401, is dropped, and the helper is asked once more.
    src.rotate_htpasswd(Creds::new("puller", "second-Pw-72"));
    helper.answer("puller", "second-Pw-72");
    let three = src
        .push_image("team/app", "v3", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let third = sync_one(&service, &src.host(), &dst.host(), "team/app:v3").await;
    assert_synced(&third);
    assert_eq!(
        helper.calls(),
        2,
        "asked again once after the 401, no restart"
    );
    skopeo::assert_landed(&dst, "team/app:v3", &three).await;
    skopeo::assert_landed(&dst, "team/app:v1", &one).await;
    assert!(
        service
            .stdout()
            .contains("registry refused the login; asking its source again"),
        "{}",
        service.stdout()
    );
    assert_nothing_leaks(
        &service,
        &[&first, &second, &third],
        &["first-Pw-71".into(), "second-Pw-72".into()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_refusal_fails_with_the_registrys_words() {
    let src = Registry::start_htpasswd("puller", "right-Pw-73").await;
    let dst = Registry::start_anonymous().await;
    let helper = CredHelper::install("itwrong");
    helper.answer("puller", "wrong-Pw-74");
    let service = start_with_helper(&src.host(), &dst.host(), &helper).await;
    let body = sync_one(&service, &src.host(), &dst.host(), "team/app:v1").await;
    assert_eq!(status_of(&body), "failed", "{body}");
    let error = error_of(&body).unwrap_or_default();
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(
        error.contains("UNAUTHORIZED"),
        "the registry's own code: {error}"
    );
    assert_eq!(
        helper.calls(),
        2,
        "asked once more after the refusal, then no more"
    );
    assert_nothing_leaks(&service, &[&body], &["wrong-Pw-74".into()]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_helper_is_stopped_with_a_clear_error() {
    let src = Registry::start_htpasswd("puller", "hang-Pw-75").await;
    let dst = Registry::start_anonymous().await;
    let helper = CredHelper::install("ithang");
    helper.hang();
    let service = start_with_helper(&src.host(), &dst.host(), &helper).await;
    let body = sync_one(&service, &src.host(), &dst.host(), "team/app:v1").await;
    assert_eq!(status_of(&body), "failed", "{body}");
    let error = error_of(&body).unwrap_or_default();
    assert!(
        error.contains("credential helper docker-credential-ithang gave no answer within 2s"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_without_credentials_means_anonymous() {
    let src = Registry::start_anonymous().await;
    // The registry lets anyone pull; a front asks once for Basic credentials, as a
    // registry does that serves some repositories anonymously, so the helper is asked.
    let front = FaultProxy::start(&src.host()).await;
    let challenge = front.add(
        Rule::on("*", "/manifests/")
            .nth(1)
            .label("Basic challenge")
            .respond(
                Reply::json_error(401, "UNAUTHORIZED", "authentication required")
                    .header("www-authenticate", r#"Basic realm="front""#),
            ),
    );
    let dst = Registry::start_anonymous().await;
    let helper = CredHelper::install("itnone");
    helper.not_found();
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let service = start_with_helper(&front.host(), &dst.host(), &helper).await;
    let body = sync_one(&service, &front.host(), &dst.host(), "team/app:v1").await;
    assert_synced(&body);
    assert_eq!(challenge.fired(), 1);
    assert_eq!(helper.calls(), 1);
    assert!(
        front
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "anonymous: no Authorization sent\n{}",
        front.summary()
    );
    skopeo::assert_landed(&dst, "team/app:v1", &pushed).await;
}

/// ECR's shape: the login comes from a helper, the registry's tokens run out while the
/// sync is under way (slow source), and the front answers one request with ECR's 403
/// "Your authorization token has expired". The sync finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_crosses_token_expiry_and_ecrs_expired_answer() {
    let issuer = TokenIssuer::start("AWS", "ecr-Pw-76").await;
    let tokened = Registry::start_token("AWS", "ecr-Pw-76", &issuer).await;
    let front = FaultProxy::start(&tokened.host()).await;
    let src = Registry::start_anonymous().await;
    let slow_src = FaultProxy::start(&src.host()).await;
    slow_src.add(
        Rule::on("GET", "/blobs/sha256:")
            .label("slow source blob")
            .trickle(Duration::from_millis(250), 2 * KIB),
    );
    let expired = front.add(
        Rule::on("PUT", "/manifests/")
            .nth(1)
            .label("ECR expired login")
            .respond(Reply::json_error(
                403,
                "DENIED",
                "Your authorization token has expired. Reauthenticate and try again.",
            )),
    );
    let helper = CredHelper::install("itecr");
    helper.answer("AWS", "ecr-Pw-76");
    // Three layers of 16 KiB at 8 KiB/s, one at a time: the third layer's upload starts
    // at least four seconds after the first token was issued, and each token really
    // expires two seconds after issue, however slow the machine.
    let image = Image::random(Format::Oci, &[16 * KIB, 16 * KIB, 16 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    issuer.expire_early(2);
    let yaml = format!(
        "{}    task: {{retries: 2, proc_num: 1}}\n",
        config(
            &[
                ("src", slow_src.host(), ""),
                (
                    "ecr",
                    front.host(),
                    &format!("credential_helper: {}", helper.name())
                ),
            ],
            None,
        )
        .replace(
            "    task: {retries: 2, credential_helper_timeout_seconds: 2}\n",
            ""
        )
    );
    let service = Service::start_raw_env(&yaml, &[helper.path_env()]).await;
    let body = sync_one(&service, &slow_src.host(), &front.host(), "team/app:v1").await;
    eprintln!(
        "--- rsync_info of the sync that crossed a token expiry ---\n{}",
        info_of(&body)
    );
    eprintln!("--- service log ---\n{}", service.stdout());
    assert_synced(&body);
    assert_eq!(expired.fired(), 1, "{}", front.summary());
    assert_eq!(helper.calls(), 2, "asked again after ECR's expired answer");
    let refused_tokens = front
        .requests()
        .iter()
        .filter(|r| r.status == Some(401) && r.header("authorization").is_some())
        .count();
    assert!(
        refused_tokens >= 1,
        "a token expired mid-sync and was renewed:\n{}",
        front.summary()
    );
    // skopeo reads with tokens of the usual lifetime: a two-second token can lapse between
    // its manifest and blob reads on a loaded machine, and skopeo does not fetch another.
    issuer.expire_normally();
    skopeo::assert_landed(&tokened, "team/app:v1", &pushed).await;
    let mut secrets: Vec<String> = issuer.issued();
    secrets.push("ecr-Pw-76".into());
    assert_nothing_leaks(&service, &[&body], &secrets).await;
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// One auth file per way Docker keeps a login: every one lets the sync through, and the
/// sync's log line names the file and the key that applied.
#[tokio::test(flavor = "multi_thread")]
async fn auth_files_as_docker_and_podman_write_them() {
    let src = Registry::start_htpasswd("filer", "file-Pw-77").await;
    let dst = Registry::start_anonymous().await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let helper = CredHelper::install("itfile");
    helper.answer("filer", "file-Pw-77");
    let host = src.host();
    let cases = [
        (
            "auths with base64 auth",
            format!(
                r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
                b64("filer:file-Pw-77")
            ),
            format!("auths[{host}]"),
            0,
        ),
        (
            "auths with username and password, namespace key",
            format!(
                r#"{{"auths": {{"{host}": {{"auth": "{}"}}, "{host}/team": {{"username": "filer", "password": "file-Pw-77"}}}}}}"#,
                b64("filer:wrong")
            ),
            format!("auths[{host}/team]"),
            0,
        ),
        (
            "credHelpers",
            format!(
                r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}, "credHelpers": {{"{host}": "itfile"}}}}"#,
                b64("filer:wrong")
            ),
            format!("credHelpers[{host}]"),
            1,
        ),
        (
            "credsStore",
            format!(r#"{{"auths": {{"{host}": {{}}}}, "credsStore": "itfile"}}"#),
            "credsStore".to_owned(),
            1,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, json, key, helper_calls)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("config-{i}.json"));
        std::fs::write(&file, json).unwrap();
        let before = helper.calls();
        let yaml = config(
            &[("src", host.clone(), ""), ("dst", dst.host(), "")],
            Some(&file),
        );
        let service = Service::start_raw_env(&yaml, &[helper.path_env()]).await;
        assert!(
            (service.stdout() + &service.stderr()).contains(&format!(
                "registry credentials: auth file {}",
                file.display()
            )),
            "{what}: the start-up log names the file: {}",
            service.stdout()
        );
        let body = sync_one(&service, &host, &dst.host(), "team/app:v1").await;
        assert_synced(&body);
        let wanted = format!(
            "Find auth information for {host}/team/app:v1: auth file {} {key} (entry src)",
            file.display()
        );
        assert!(
            info_of(&body).contains(&wanted),
            "{what}: {}",
            info_of(&body)
        );
        assert_eq!(helper.calls() - before, *helper_calls, "{what}");
        assert_nothing_leaks(
            &service,
            &[&body],
            &["file-Pw-77".into(), b64("filer:file-Pw-77")],
        )
        .await;
    }
    skopeo::assert_landed(&dst, "team/app:v1", &pushed).await;
}

/// An `identitytoken` (what `docker login` stores for Docker Hub and ACR) is exchanged at
/// the token realm with an OAuth2 refresh-token POST, never sent to the registry.
#[tokio::test(flavor = "multi_thread")]
async fn an_identity_token_is_exchanged_at_the_realm() {
    let issuer = TokenIssuer::start("nobody", "unused-Pw-78").await;
    issuer.accept_refresh_token("idtok-Secret-79");
    let tokened = Registry::start_token("nobody", "unused-Pw-78", &issuer).await;
    let src = Registry::start_anonymous().await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"auths": {{"{}": {{"identitytoken": "idtok-Secret-79"}}}}}}"#,
            tokened.host()
        ),
    )
    .unwrap();
    let yaml = config(
        &[("src", src.host(), ""), ("dst", tokened.host(), "")],
        Some(&file),
    );
    let service = Service::start_raw(&yaml, 0o600).await;
    let body = sync_one(&service, &src.host(), &tokened.host(), "team/app:v1").await;
    assert_synced(&body);
    assert!(
        info_of(&body).contains("identity token"),
        "{}",
        info_of(&body)
    );
    let grants = issuer.grants();
    assert!(
        !grants.is_empty() && grants.iter().all(|g| g == "refresh_token"),
        "{grants:?}"
    );
    skopeo::assert_landed(&tokened, "team/app:v1", &pushed).await;
    let mut secrets = issuer.issued();
    secrets.push("idtok-Secret-79".into());
    assert_nothing_leaks(&service, &[&body], &secrets).await;
}

/// `password_file` (a Kubernetes secret, a Vault agent file) is read again when it
/// changes: a rotation needs no restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_file_is_read_again_when_it_changes() {
    let mut src = Registry::start_htpasswd("filer", "old-Pw-80").await;
    let dst = Registry::start_anonymous().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "old-Pw-80\n").unwrap();
    let one = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let yaml = config(
        &[
            (
                "src",
                src.host(),
                &format!("username: filer, password_file: {}", secret.display()),
            ),
            ("dst", dst.host(), ""),
        ],
        None,
    );
    let service = Service::start_raw(&yaml, 0o600).await;
    let first = sync_one(&service, &src.host(), &dst.host(), "team/app:v1").await;
    assert_synced(&first);
    assert!(
        info_of(&first).contains(&format!(
            "username: filer, password from {}",
            secret.display()
        )),
        "{}",
        info_of(&first)
    );
    skopeo::assert_landed(&dst, "team/app:v1", &one).await;

    src.rotate_htpasswd(Creds::new("filer", "newer-Pw-81"));
    std::fs::write(&secret, "newer-Pw-81\n").unwrap();
    let two = src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let second = sync_one(&service, &src.host(), &dst.host(), "team/app:v2").await;
    assert_synced(&second);
    skopeo::assert_landed(&dst, "team/app:v2", &two).await;
    assert_nothing_leaks(
        &service,
        &[&first, &second],
        &["old-Pw-80".into(), "newer-Pw-81".into()],
    )
    .await;
}

/// Docker Hub's pull quota, from a front that adds its `ratelimit-*` headers to a real
/// registry's answers (any registry sending them is held to them; only Docker Hub does
/// in practice). With fewer pulls left than `task.dockerhub_min_remaining` an async job
/// waits, its image at step `rate_limited` and its log saying why, then proceeds once
/// the quota is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_waits_while_docker_hubs_quota_is_under_the_floor() {
    let src = Registry::start_anonymous().await;
    let hub = FaultProxy::start(&src.host()).await;
    // A 100-pull window of 100 s gives one pull back per second: the wait is 1 s.
    let low = hub.add(
        Rule::on("*", "/manifests/")
            .first(4)
            .label("quota low")
            .add_headers(&[
                ("ratelimit-limit", "100;w=100"),
                ("ratelimit-remaining", "2;w=100"),
            ]),
    );
    hub.add(
        Rule::on("*", "/manifests/")
            .label("quota back")
            .add_headers(&[
                ("ratelimit-limit", "100;w=100"),
                ("ratelimit-remaining", "60;w=100"),
            ]),
    );
    let dst = Registry::start_anonymous().await;
    let one = src
        .push_image("library/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let two = src
        .push_image("library/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let yaml = config(&[("hub", hub.host(), ""), ("dst", dst.host(), "")], None).replace(
        "task: {retries: 2,",
        "task: {dockerhub_min_remaining: 5, retries: 2,",
    );
    let service = Service::start_raw(&yaml, 0o600).await;
    // The first sync learns the quota (2 left) from its manifest answer.
    let first = sync_one(&service, &hub.host(), &dst.host(), "library/app:v1").await;
    assert_synced(&first);
    skopeo::assert_landed(&dst, "library/app:v1", &one).await;

    let body = serde_json::json!({"async": true, "rsync_config": {
        "source": format!("{}/library/app:v2", hub.host()),
        "target": format!("{}/library/app:v2", dst.host())}});
    let (status, job) = service.post_json(Some(&admin()), &body).await;
    assert_eq!(status.as_u16(), 202, "{job}");
    let path = format!("/v1/image/rsync/jobs/{}", job["id"]);
    let mut saw_wait = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (_, job) = service.call_json(Method::GET, &path, &admin()).await;
        saw_wait |= job["progress"]["images"][0]["step"] == "rate_limited";
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "job not done: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(saw_wait, "the job showed step rate_limited while it waited");
    let info = info_of(&job["result"]);
    assert!(
        info.contains("only 2 of 100 pulls left in the registry's 100s window (ratelimit-remaining, floor 5): waiting 1s before pulling"),
        "{info}"
    );
    assert_eq!(
        low.fired(),
        4,
        "looked again with HEADs until the quota was back"
    );
    let gets_while_low = hub
        .requests()
        .iter()
        .filter(|r| r.rule.as_deref() == Some("quota low") && r.method == "GET")
        .count();
    assert_eq!(
        gets_while_low,
        1,
        "only the first sync's pull counted while low:\n{}",
        hub.summary()
    );
    skopeo::assert_landed(&dst, "library/app:v2", &two).await;
}

/// Config for the rate-limit tests: the front `hub` (a fault proxy adding Docker Hub's
/// `ratelimit-*` headers to a real registry's answers), the target, floor 5, and the
/// given `rsyncserver.jobs` keys.
fn hub_config(hub: &FaultProxy, dst: &Registry, jobs: &str) -> String {
    let mut yaml = config(&[("hub", hub.host(), ""), ("dst", dst.host(), "")], None).replace(
        "task: {retries: 2,",
        "task: {dockerhub_min_remaining: 5, retries: 2,",
    );
    if !jobs.is_empty() {
        yaml.push_str(&format!("  jobs: {{{jobs}}}\n"));
    }
    yaml
}

/// POSTs a synchronous sync with optional extra headers; returns status, answer and how
/// long the answer took.
async fn timed_sync(
    service: &Service,
    source: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, Duration) {
    let body = serde_json::json!({"rsync_config": {"source": source, "target": target}});
    let mut req = service
        .client()
        .post(service.url("/v1/image/rsync"))
        .basic_auth("admin", Some("adminpw"))
        .json(&body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let start = std::time::Instant::now();
    let resp = req.send().await.expect("POST the sync");
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.expect("JSON answer");
    eprintln!("sync {source} -> {target}: HTTP {status}\n{answer:#}");
    (status, answer, start.elapsed())
}

/// A synchronous request whose rate-limit wait would outlast what its caller waits
/// (`rsyncserver.jobs.sync_wait_seconds`, or `Prefer: wait=N`) fails at once with 429
/// `rate_limited`, saying how long the wait would be and what to do, instead of waiting
/// into the caller's timeout. Docker Hub's headers and 429s come from a front over a real
/// registry (no packaged registry sends them). One row per way the wait is announced:
/// the quota under the floor (216 s until a pull comes back: 100 pulls per 21600 s), a
/// 429 with `Retry-After: 3600`, and a 429 naming only its quota window, as Docker Hub's.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_request_fails_at_once_when_the_rate_limit_wait_outlasts_it() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let one = src
        .push_image("library/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    src.push_image("library/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let hub_low = [
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "2;w=21600"),
    ];
    // (row, jobs keys, request headers, rule added after the first sync, wanted wait,
    //  wanted limit, wanted words)
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<Rule>,
        u64,
        u64,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        (
            "quota under the floor, default limit",
            "",
            &[],
            None,
            216,
            60,
            "only 2 of 100 pulls left in the registry's 21600s window (ratelimit-remaining, floor 5): a pull comes back in about 216s",
        ),
        (
            "quota under the floor, Prefer: wait=5",
            "sync_wait_seconds: 600",
            &[("prefer", "wait=5")],
            None,
            216,
            5,
            "only 2 of 100 pulls left",
        ),
        (
            "429 with Retry-After",
            "",
            &[],
            Some(
                Rule::on("GET", "/manifests/v2")
                    .every()
                    .respond(Reply::too_many_requests(3600, true)),
            ),
            3600,
            30,
            "HTTP 429 Too Many Requests, asking to wait 3600s",
        ),
        (
            "429 with only Docker Hub's quota window",
            "",
            &[],
            Some(
                Rule::on("GET", "/manifests/v2").every().respond(
                    Reply::json_error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit")
                        .header("ratelimit-limit", "100;w=21600")
                        .header("ratelimit-remaining", "0;w=21600"),
                ),
            ),
            216,
            30,
            "HTTP 429 Too Many Requests, asking to wait 216s",
        ),
    ];
    let mut failures = Vec::new();
    for (row, jobs, headers, rule, wait, limit, words) in rows {
        let hub = FaultProxy::start(&src.host()).await;
        let quota_low = rule.is_none();
        if quota_low {
            hub.add(Rule::on("*", "/manifests/").every().add_headers(&hub_low));
        }
        let service = Service::start_raw(&hub_config(&hub, &dst, jobs), 0o600).await;
        // The first sync learns the quota (or meets no 429 yet) and lands.
        let (status, first, _) = timed_sync(
            &service,
            &format!("{}/library/app:v1", hub.host()),
            &format!("{}/library/app:v1", dst.host()),
            &[],
        )
        .await;
        if status != 200 {
            failures.push(format!("{row}: first sync HTTP {status}: {first}"));
            continue;
        }
        if let Some(rule) = rule {
            hub.add(rule);
        }
        hub.clear_requests();
        let (status, answer, took) = timed_sync(
            &service,
            &format!("{}/library/app:v2", hub.host()),
            &format!("{}/library/app:v2", dst.host()),
            headers,
        )
        .await;
        let error = error_of(&answer).unwrap_or_default().to_owned();
        let wanted_error = format!("that wait ({wait}s) is longer than this sync may wait ({limit}s): run it again after that, or as an asynchronous job");
        let pulls = hub
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/manifests/v2"))
            .count();
        let checks = [
            (status == 429, format!("HTTP {status}, want 429")),
            (
                answer["rsync_data"]["failure"] == "rate_limited",
                format!("failure {}", answer["rsync_data"]["failure"]),
            ),
            (
                status_of(&answer) == "failed",
                format!("status {}", status_of(&answer)),
            ),
            (
                error.contains(words),
                format!("error lacks {words:?}: {error}"),
            ),
            (
                error.contains(&wanted_error),
                format!("error lacks {wanted_error:?}: {error}"),
            ),
            (error.contains("rate limited"), format!("error: {error}")),
            // Not a speed measure: the answer came before the limit, so it did not wait.
            (
                took < Duration::from_secs(limit.min(30)),
                format!("answered after {took:?}"),
            ),
            (
                !quota_low || pulls == 0,
                format!("{pulls} manifest GETs (pulls) while the quota was low"),
            ),
        ];
        for (ok, what) in checks {
            if !ok {
                failures.push(format!("{row}: {what}"));
            }
        }
        skopeo::assert_absent(&dst, "library/app:v2").await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    skopeo::assert_landed(&dst, "library/app:v1", &one).await;
}

/// An asynchronous job that meets Docker Hub's quota under the floor waits instead of
/// failing, and shows it: state `queued` (not `running`) with `waiting` saying
/// `rate_limited`, the registry, and when it resumes; once the quota is back it runs on
/// and lands. The quota headers come from a front over a real registry, which keeps the
/// quota low until the test has seen the job wait.
#[tokio::test(flavor = "multi_thread")]
async fn an_async_job_stays_queued_with_the_reason_while_the_quota_is_low() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let hub = FaultProxy::start(&src.host()).await;
    // 100 pulls per 100 s: one comes back each second, so the job looks again each second.
    hub.add(
        Rule::on("*", "/manifests/")
            .every()
            .label("quota low")
            .add_headers(&[
                ("ratelimit-limit", "100;w=100"),
                ("ratelimit-remaining", "2;w=100"),
            ]),
    );
    src.push_image("library/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let two = src
        .push_image("library/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let service = Service::start_raw(&hub_config(&hub, &dst, ""), 0o600).await;
    let first = sync_one(&service, &hub.host(), &dst.host(), "library/app:v1").await;
    assert_synced(&first);

    let body = serde_json::json!({"async": true, "rsync_config": {
        "source": format!("{}/library/app:v2", hub.host()),
        "target": format!("{}/library/app:v2", dst.host())}});
    let (status, job) = service.post_json(Some(&admin()), &body).await;
    assert_eq!(status.as_u16(), 202, "{job}");
    let path = format!("/v1/image/rsync/jobs/{}", job["id"]);
    let get = || async { service.call_json(Method::GET, &path, &admin()).await.1 };

    // Wait for the event "job waits on the quota"; it stays so while the quota is low.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let job = get().await;
        if job["waiting"].is_object() {
            break job;
        }
        assert!(
            !job["state"]
                .as_str()
                .is_some_and(|s| ["succeeded", "failed", "cancelled"].contains(&s)),
            "the job ended without waiting: {job}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "job never waited: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Two looks at the quota later (one each second) it still waits, and still says why.
    let looks = hub.requests_to("HEAD", "/manifests/v2").len();
    while hub.requests_to("HEAD", "/manifests/v2").len() < looks + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no new look at the quota"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still = get().await;
    for job in [&waiting, &still] {
        assert_eq!(
            job["state"], "queued",
            "waiting on the quota is not running: {job}"
        );
        assert_eq!(job["waiting"]["reason"], "rate_limited", "{job}");
        assert_eq!(job["waiting"]["registry"], hub.host(), "{job}");
        let message = job["waiting"]["message"].as_str().unwrap_or_default();
        let until = job["waiting"]["until"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("rate_limited: registry {} quota, resuming at ", hub.host()))
                && message.contains("only 2 of 100 pulls left in the registry's 100s window (ratelimit-remaining, floor 5): waiting 1s before pulling"),
            "{message}"
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(until).is_ok(),
            "until is a time: {job}"
        );
        assert_eq!(
            job["progress"]["images"][0]["step"], "rate_limited",
            "{job}"
        );
        assert!(job["started_at"].is_string(), "it had its slot: {job}");
    }
    let (_, queued) = service
        .call_json(Method::GET, "/v1/image/rsync/jobs?state=queued", &admin())
        .await;
    assert!(
        queued["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["id"] == waiting["id"])),
        "listed among the queued jobs: {queued}"
    );
    let pulls_while_low = hub
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/v2"))
        .count();
    assert_eq!(
        pulls_while_low,
        0,
        "no pull while the quota was low:\n{}",
        hub.summary()
    );

    // The quota comes back: the job runs on and lands.
    hub.clear_rules();
    hub.add(
        Rule::on("*", "/manifests/")
            .every()
            .label("quota back")
            .add_headers(&[
                ("ratelimit-limit", "100;w=100"),
                ("ratelimit-remaining", "60;w=100"),
            ]),
    );
    let done = loop {
        let job = get().await;
        if job["state"]
            .as_str()
            .is_some_and(|s| ["succeeded", "failed", "cancelled"].contains(&s))
        {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "job not done: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done.get("waiting").is_none(),
        "no wait left on the ended job: {done}"
    );
    assert!(
        info_of(&done["result"]).contains("waiting 1s before pulling"),
        "the sync log says why it waited: {}",
        info_of(&done["result"])
    );
    skopeo::assert_landed(&dst, "library/app:v2", &two).await;
}

/// `auth_file` is read again when it changes, as docker reads its config.json for every
/// command: the registry's password is rotated (htpasswd rewritten) and the file
/// rewritten the way `docker login` writes it (a new file renamed over the old one); the
/// next sync logs in with the new password, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_auth_file_is_used_by_the_next_sync() {
    let mut src = Registry::start_htpasswd("filer", "old-Pw-90").await;
    let dst = Registry::start_anonymous().await;
    let host = src.host();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let write_file = |password: &str| {
        let next = dir.path().join("config.json.tmp");
        std::fs::write(
            &next,
            format!(
                r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
                b64(&format!("filer:{password}"))
            ),
        )
        .unwrap();
        std::fs::rename(&next, &file).unwrap();
    };
    write_file("old-Pw-90");
    let one = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let yaml = config(
        &[("dst", dst.host(), ""), ("src", host.clone(), "")],
        Some(&file),
    );
    let service = Service::start_raw(&yaml, 0o600).await;
    let first = sync_one(&service, &host, &dst.host(), "team/app:v1").await;
    assert_synced(&first);
    skopeo::assert_landed(&dst, "team/app:v1", &one).await;

    src.rotate_htpasswd(Creds::new("filer", "newer-Pw-91"));
    let two = src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    // The registry now refuses the old password: the file's old login fails.
    let refused = sync_one(&service, &host, &dst.host(), "team/app:v2").await;
    assert_eq!(status_of(&refused), "failed", "{refused}");
    assert!(
        error_of(&refused)
            .is_some_and(|e| e.contains("authentication failed") || e.contains("401")),
        "{refused}"
    );

    write_file("newer-Pw-91");
    let second = sync_one(&service, &host, &dst.host(), "team/app:v2").await;
    assert_synced(&second);
    assert!(
        info_of(&second).contains(&format!(
            "Find auth information for {host}/team/app:v2: auth file {} auths[{host}] (entry src)",
            file.display()
        )),
        "{}",
        info_of(&second)
    );
    skopeo::assert_landed(&dst, "team/app:v2", &two).await;
    let log = service.stdout() + &service.stderr();
    assert!(
        log.contains("auth file changed, read again: auth file"),
        "the service log says the file was read again:\n{log}"
    );
    assert_nothing_leaks(
        &service,
        &[&first, &refused, &second],
        &[
            "old-Pw-90".into(),
            "newer-Pw-91".into(),
            b64("filer:old-Pw-90"),
            b64("filer:newer-Pw-91"),
        ],
    )
    .await;
}
