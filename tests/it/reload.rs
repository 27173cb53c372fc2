//! Reload on SIGHUP (issue 14 point 3) on the real service with real registries
//! (htpasswd mode): a user added, a scope changed and a registry password rotated by
//! editing the config file and sending SIGHUP, while a slowed sync runs throughout and
//! still ends `successfully` with the logins it started with; a config that does not
//! load is refused with its reason and the service keeps answering with the old one.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::contract::status_of;
use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::fixture::random_password;
use crate::common::{skopeo, Cases, Creds, Format, Image, Registry, Service};

const JOBS: &str = "/v1/image/rsync/jobs";
/// How long the service may take to act on a SIGHUP (it is milliseconds; a loaded
/// machine gets slack).
const RELOAD_LIMIT: Duration = Duration::from_secs(30);

/// What stays the same in every config of a test: the service users admin and carol,
/// the source (a fault proxy) and dst2's host.
struct Fixed {
    admin: Creds,
    carol: Creds,
    src: String,
    dst2: String,
}

/// The parts of the config the test changes between reloads.
struct Knobs<'a> {
    /// Service users besides admin and carol.
    extra_users: Vec<&'a Creds>,
    /// The one target prefix (under dst2) carol's scope allows.
    carol_target: &'a str,
    /// dst1's entry, with its login; `None` removes it (and so dst1's permission).
    dst1: Option<&'a Registry>,
    /// The login for dst2.
    dst2: &'a Creds,
}

impl Fixed {
    /// The body of the `rsyncserver:` section for `knobs`.
    fn yaml(&self, knobs: &Knobs) -> String {
        let mut users = String::new();
        for u in [&self.admin, &self.carol]
            .into_iter()
            .chain(knobs.extra_users.iter().copied())
        {
            users.push_str(&format!("    {}: \"{}\"\n", u.user, u.pass));
        }
        let entry = |key: &str, host: &str, creds: Option<&Creds>| {
            let login = creds.map_or(String::new(), |c| {
                format!(", username: \"{}\", password: \"{}\"", c.user, c.pass)
            });
            format!("      {key}: {{registry: \"{host}\", insecure: true{login}}}\n")
        };
        let mut registries = entry("src", &self.src, None);
        if let Some(dst1) = knobs.dst1 {
            registries.push_str(&entry("dst1", &dst1.host(), dst1.creds()));
        }
        registries.push_str(&entry("dst2", &self.dst2, Some(knobs.dst2)));
        format!(
            "  auth:\n{users}  admins: [{admin}]\n  scopes:\n    {carol}:\n      target: [\"{dst2}/{target}\"]\n  rsyncconfig:\n    task: {{proc_num: 1, retries: 0}}\n    auth:\n{registries}",
            admin = self.admin.user,
            carol = self.carol.user,
            dst2 = self.dst2,
            target = knobs.carol_target,
        )
    }
}

/// POSTs a synchronous sync of `source` to `target` as `creds`.
async fn post(service: &Service, creds: &Creds, source: &str, target: &str) -> (StatusCode, Value) {
    let body = json!({"rsync_config": {"source": source, "target": target}});
    let (status, answer) = service.post_json(Some(creds), &body).await;
    eprintln!("{} {source} -> {target}: {status} {answer}", creds.user);
    (status, answer)
}

/// Sends SIGHUP and waits for the `n`th "config reloaded" line; returns it.
async fn reload(service: &mut Service, n: usize) -> String {
    service.hangup();
    service
        .wait_stdout("config reloaded on SIGHUP", n, RELOAD_LIMIT)
        .await
}

/// The job, read as `creds`.
async fn job(service: &Service, creds: &Creds, id: i64) -> Value {
    let (status, job) = service
        .call_json(reqwest::Method::GET, &format!("{JOBS}/{id}"), creds)
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job
}

/// One slowed two-image sync (its first layer trickles for ~30 s through a fault proxy
/// over the source registry; `proc_num: 1`, so the second image starts only after the
/// reloads) runs throughout three reloads: bob is added (401, then 200), carol's scope
/// moves (403, then 200), dst2's password is rotated at the registry (the old login
/// fails) and in the config (next sync 200) while dst1's entry is removed (a new sync to
/// dst1 is refused 403). The slowed sync, whose second image resolves its dst1 client
/// after the last reload, ends `successfully` and both images land (skopeo). Each
/// reload's log line names what changed and no log holds a password.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_a_user_moves_a_scope_and_rotates_a_password_while_a_sync_runs() {
    let dst2_old = Creds::new("pusher2", &random_password("dst2-old"));
    let dst1_pass = random_password("dst1");
    let (src, dst1, mut dst2) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher1", &dst1_pass),
        Registry::start_htpasswd(&dst2_old.user, &dst2_old.pass),
    );
    let slow = Image::random(Format::Oci, &[512 * 1024]);
    let (slow_v2, app_v1) = (
        Image::random(Format::Oci, &[16 * 1024]),
        Image::random(Format::Oci, &[4 * 1024]),
    );
    let (slow1, slow2, small) = tokio::join!(
        src.push_image("team/slow", "v1", &slow),
        src.push_image("team/slow", "v2", &slow_v2),
        src.push_image("team/app", "v1", &app_v1),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let layer = slow.layers[0].digest.clone();
    let slowed = format!("^/v2/team/slow/blobs/{layer}$");
    proxy.add(
        Rule::on("GET", &slowed)
            .every()
            .trickle(Duration::from_millis(250), 4 * 1024),
    );
    let fixed = Fixed {
        admin: Creds::new("admin", &random_password("admin")),
        carol: Creds::new("carol", &random_password("carol")),
        src: proxy.host(),
        dst2: dst2.host(),
    };
    let (admin, carol) = (fixed.admin.clone(), fixed.carol.clone());
    let bob = Creds::new("bob", &random_password("bob"));
    let mut service = Service::start_raw(
        &fixed.yaml(&Knobs {
            extra_users: vec![],
            carol_target: "allowed",
            dst1: Some(&dst1),
            dst2: &dst2_old,
        }),
        0o600,
    )
    .await;
    let app = format!("{}/team/app:v1", fixed.src);

    // The slowed sync, asynchronous, as admin; wait until its big layer is moving.
    let body = json!({"async": true, "rsync_config": {
        "source": format!("{}/team/slow:v1,v2", fixed.src),
        "target": format!("{}/prod/slow", dst1.host()),
    }});
    let (status, submitted) = service.post_json(Some(&admin), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let id = submitted["id"].as_i64().expect("job id");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.requests_to("GET", &slowed).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slowed layer was never asked for:\n{}",
            proxy.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. A new user: 401 before the reload, 200 after.
    let (status, answer) = post(&service, &bob, &app, &format!("{}/bob/app:v1", fixed.dst2)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    service.rewrite_raw(&fixed.yaml(&Knobs {
        extra_users: vec![&bob],
        carol_target: "allowed",
        dst1: Some(&dst1),
        dst2: &dst2_old,
    }));
    let line = reload(&mut service, 1).await;
    assert!(line.contains("users added [bob]"), "{line}");
    let (status, answer) = post(&service, &bob, &app, &format!("{}/bob/app:v1", fixed.dst2)).await;
    assert_eq!(
        (status, status_of(&answer)),
        (StatusCode::OK, "successfully"),
        "{answer}"
    );

    // 2. A scope moves: carol may sync to dst2/other only after the reload.
    let other = format!("{}/other/app:v1", fixed.dst2);
    let (status, answer) = post(&service, &carol, &app, &other).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    service.rewrite_raw(&fixed.yaml(&Knobs {
        extra_users: vec![&bob],
        carol_target: "other",
        dst1: Some(&dst1),
        dst2: &dst2_old,
    }));
    let line = reload(&mut service, 2).await;
    assert!(line.contains("scopes changed for [carol]"), "{line}");
    assert!(!line.contains("users"), "{line}");
    let (status, answer) = post(&service, &carol, &app, &other).await;
    assert_eq!(
        (status, status_of(&answer)),
        (StatusCode::OK, "successfully"),
        "{answer}"
    );
    let (status, answer) = post(
        &service,
        &carol,
        &app,
        &format!("{}/allowed/app:v1", fixed.dst2),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the old scope still applies: {answer}"
    );

    // 3. dst2's password rotated at the registry: the old login fails...
    let dst2_new = Creds::new("pusher2", &random_password("dst2-new"));
    dst2.rotate_htpasswd(dst2_new.clone());
    let rotated = format!("{}/rotated/app:v1", fixed.dst2);
    let (status, answer) = post(&service, &admin, &app, &rotated).await;
    assert_ne!(
        status,
        StatusCode::OK,
        "the registry still took the old password: {answer}"
    );
    // ...until the config has the new one; dst1's entry goes in the same edit.
    service.rewrite_raw(&fixed.yaml(&Knobs {
        extra_users: vec![&bob],
        carol_target: "other",
        dst1: None,
        dst2: &dst2_new,
    }));
    let line = reload(&mut service, 3).await;
    assert!(line.contains("registry entries removed [dst1]"), "{line}");
    assert!(line.contains("registry entries changed [dst2]"), "{line}");
    let (status, answer) = post(&service, &admin, &app, &rotated).await;
    assert_eq!(
        (status, status_of(&answer)),
        (StatusCode::OK, "successfully"),
        "{answer}"
    );
    let (status, answer) = post(
        &service,
        &admin,
        &app,
        &format!("{}/prod/app:v1", dst1.host()),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "dst1 is no longer allowed: {answer}"
    );

    // The slowed sync ran throughout, and ends with what it started with.
    let running = job(&service, &admin, id).await;
    assert_eq!(
        running["state"],
        json!("running"),
        "the slowed sync ended before the reloads were done (slow it further): {running}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let finished = loop {
        let j = job(&service, &admin, id).await;
        if j["state"] != json!("running") && j["state"] != json!("queued") {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slowed sync never ended: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished["state"], json!("succeeded"), "{finished}");
    assert_eq!(status_of(&finished["result"]), "successfully", "{finished}");
    skopeo::assert_landed(&dst1, "prod/slow:v1", &slow1).await;
    skopeo::assert_landed(&dst1, "prod/slow:v2", &slow2).await;
    skopeo::assert_landed(&dst2, "rotated/app:v1", &small).await;

    let output = service.stdout() + &service.stderr() + &service.logfile_text();
    for secret in [
        &admin.pass,
        &carol.pass,
        &bob.pass,
        &dst2_old.pass,
        &dst2_new.pass,
    ] {
        assert!(
            !output.contains(secret.as_str()),
            "a password is in the service's output"
        );
    }
    if let Some(c) = dst1.creds() {
        assert!(
            !output.contains(c.pass.as_str()),
            "dst1's password is in the output"
        );
    }
}

/// A config file that does not load is refused on SIGHUP, with the reason (the key or
/// the file) in the log, and nothing of it applies: the user it would add stays 401, the
/// running users keep working. After the table, a good file is still picked up.
#[tokio::test]
async fn a_bad_config_on_sighup_is_refused_and_the_old_one_stays() {
    let admin = Creds::new("admin", &random_password("admin"));
    let eve = Creds::new("eve", &random_password("eve"));
    let users = |with_eve: bool| {
        let mut u = format!("  auth:\n    admin: \"{}\"\n", admin.pass);
        if with_eve {
            u.push_str(&format!("    eve: \"{}\"\n", eve.pass));
        }
        u
    };
    let mut service = Service::start_raw(&users(false), 0o600).await;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("auth.json");
    std::fs::write(&garbage, "this is not JSON").unwrap();
    let with_eve = users(true);
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "YAML that does not parse",
            format!("{with_eve}  scopes: {{eve: [\n"),
            "config.yaml: ",
        ),
        (
            "an unknown key",
            format!("{with_eve}  nonsense: 1\n"),
            "nonsense",
        ),
        (
            "a scope for no such user",
            format!("{with_eve}  scopes: {{mallory: {{target: [reg.example.com]}}}}\n"),
            "rsyncserver.scopes.mallory",
        ),
        (
            "an empty password",
            format!("{with_eve}    frank: \"\"\n"),
            "rsyncserver.auth.frank",
        ),
        (
            "an unset ${VAR}",
            format!("{with_eve}    frank: \"${{IMAGERSYNC_TEST_NEVER_SET}}\"\n"),
            "IMAGERSYNC_TEST_NEVER_SET",
        ),
        (
            "a missing auth_file",
            format!(
                "{with_eve}  rsyncconfig:\n    auth_file: {}\n",
                dir.path().join("none.json").display()
            ),
            "rsyncserver.rsyncconfig.auth_file",
        ),
        (
            "an auth_file that is not JSON",
            format!(
                "{with_eve}  rsyncconfig:\n    auth_file: {}\n",
                garbage.display()
            ),
            "auth.json is not a JSON object",
        ),
    ];
    let mut cases = Cases::new();
    for (n, (name, yaml, reason)) in bad.iter().enumerate() {
        service.rewrite_raw(yaml);
        service.hangup();
        let line = service
            .wait_stdout("config not reloaded on SIGHUP", n + 1, RELOAD_LIMIT)
            .await;
        let (admin_status, eve_status) = (
            service
                .call_json(reqwest::Method::GET, JOBS, &admin)
                .await
                .0,
            service.call_json(reqwest::Method::GET, JOBS, &eve).await.0,
        );
        cases.check(name, || {
            assert!(line.contains(reason), "{reason:?} not in: {line}");
            assert!(
                line.contains("still running with the previous one"),
                "{line}"
            );
            assert!(!line.contains(&eve.pass), "a password in: {line}");
            assert_eq!(admin_status, StatusCode::OK, "the running user lost access");
            assert_eq!(
                eve_status,
                StatusCode::UNAUTHORIZED,
                "the refused file's user got in"
            );
        });
    }
    cases.finish();
    assert!(
        !service.stdout().contains("config reloaded on SIGHUP"),
        "a bad file was applied:\n{}",
        service.stdout()
    );
    // Still listening for SIGHUP, and a good file applies.
    service.rewrite_raw(&with_eve);
    let line = reload(&mut service, 1).await;
    assert!(line.contains("users added [eve]"), "{line}");
    assert_eq!(
        service.call_json(reqwest::Method::GET, JOBS, &eve).await.0,
        StatusCode::OK
    );
}
