//! The dashboard at `GET /` in a real headless Chromium (through chromedriver), against
//! the real service binary and real registries: sign in through the form, watch a
//! slowed-down sync run and finish, read its log lines, cancel another from the page,
//! see a mirror with its last and next run, and check that the page fits a narrow window.
//!
//! The source registry sits behind the fault proxy, which trickles every blob download,
//! so a 4 MiB image takes about ten seconds and the page is seen mid-transfer.
//! `IMAGERSYNC_DASHBOARD_SHOTS=DIR` also copies the screenshots to DIR (how
//! `doc/dashboard.png` was made).

use std::time::Duration;

use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::fixture::random_password;
use crate::common::service::admin;
use crate::common::{skopeo, Browser, Format, Image, Registry, Service, ServiceConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

const KIB: usize = 1024;
const REPO: &str = "team/app";
/// Generous: the machine running the suite may be busy with other builds.
const WAIT: Duration = Duration::from_secs(90);

/// `detail()`: what the job panel shows (state, done/total of its bytes and blobs
/// meters, log, error, whether Cancel is offered), or `null` while it is hidden.
const DETAIL_FN: &str = r#"function detail() {
    const panel = document.getElementById("job-panel");
    const meter = (id) => {
        const m = document.getElementById(id);
        return m ? [Number(m.dataset.done), Number(m.dataset.total)] : null;
    };
    if (panel.hidden) return null;
    return {
        id: Number(panel.dataset.jobId),
        state: panel.dataset.state,
        bytes: meter("job-bytes"),
        blobs: meter("job-blobs"),
        log: document.getElementById("job-log").textContent,
        error: document.getElementById("job-error").textContent,
        cancel_shown: !document.getElementById("job-cancel").hidden,
    };
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_follows_jobs_live_shows_their_log_and_cancels() {
    let browser = Browser::start().await;
    let dst_pass = random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &dst_pass)
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let image = Image::random(Format::Oci, &[3072 * KIB, 1024 * KIB]);
    let pushed = src.push_image(REPO, "v1", &image).await;
    let slow = Image::random(Format::Oci, &[4096 * KIB]);
    src.push_image(REPO, "v2", &slow).await;
    // The mirror's own image: sharing no blob with the others, so that the slowed jobs
    // below cannot mount what it copied.
    let mirrored = src
        .push_image("other/app", "v1", &Image::random(Format::Oci, &[16 * KIB]))
        .await;
    // 32 KiB every 100 ms per blob download: the 3 MiB layer takes about 10 s, plenty
    // for a page that looks every 2 s while idle and every second while a job runs.
    proxy.add(Rule::on("GET", "/blobs/sha256:").trickle(Duration::from_millis(100), 32 * KIB));
    let mut config = ServiceConfig::new()
        .entry("src", &proxy.host(), None)
        .registry("src-direct", &src)
        .registry("dst", &dst);
    // An admin sees the mirrors; this one has never run, so it runs at start, unslowed.
    config.admins = vec!["admin".into()];
    config.mirrors = vec![json!({
        "name": "app-mirror",
        "source": format!("{}/other/app:v1", src.host()),
        "target": format!("{}/mirror/app", dst.host()),
        "every": "1h",
    })];
    let service = Service::start(&config).await;
    let shots = browser.dir().to_path_buf();

    // The public page, then the sign-in form: a wrong password first.
    browser.goto(&service.url("/")).await;
    browser
        .wait_for(
            "the sign-in form",
            WAIT,
            r#"return !document.getElementById("sign-in-panel").hidden"#,
        )
        .await;
    let tools = browser
        .execute(r#"return [...document.querySelectorAll(".tools a")].map(a => a.href)"#)
        .await;
    assert_eq!(
        tools,
        json!([crate::common::service::TOOLS_LINK]),
        "config.tools links kept"
    );
    browser.type_into("#user", "admin").await;
    browser.type_into("#password", "not-the-password").await;
    browser.click("#sign-in button[type=submit]").await;
    let refusal = browser
        .wait_for(
            "the refusal",
            WAIT,
            r#"return document.getElementById("sign-in-error").textContent || null"#,
        )
        .await;
    assert_eq!(refusal, "Wrong user or password.");
    browser.type_into("#password", &admin().pass).await;
    browser.click("#sign-in button[type=submit]").await;
    browser
        .wait_for(
            "the job list",
            WAIT,
            r#"return !document.getElementById("jobs-panel").hidden"#,
        )
        .await;
    let stored = browser
        .execute(r#"return JSON.parse(sessionStorage.getItem("imagersync.credentials")).user"#)
        .await;
    assert_eq!(stored, "admin", "credentials kept for this tab only");

    // The mirror's row: its last run (state, trigger, a link to the job) and next run,
    // the same run the API lists.
    let mirror = browser
        .wait_for(
            "the mirror's row with its finished run",
            WAIT,
            r#"const row = document.querySelector('#mirrors tr[data-mirror="app-mirror"]');
               if (!row || document.getElementById("mirrors-panel").hidden) return null;
               const link = row.querySelector(".last a.job-link");
               const state = row.querySelector(".last .state");
               if (!link || !state || state.textContent !== "succeeded") return null;
               return {href: link.getAttribute("href"), text: link.textContent,
                       what: row.querySelector(".what").textContent,
                       runs: row.querySelector(".schedule").textContent,
                       next: row.querySelector(".next").textContent};"#,
        )
        .await;
    let (status, listed) = service
        .call_json(reqwest::Method::GET, "/v1/mirrors", &admin())
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let last = listed["mirrors"][0]["last_job"]["id"]
        .as_i64()
        .expect("last job");
    assert_eq!(mirror["href"], format!("#job-{last}"), "{mirror}");
    assert_eq!(mirror["text"], format!("#{last}"));
    assert_eq!(mirror["runs"], "every 1h");
    assert!(
        mirror["what"].as_str().unwrap().contains("/mirror/app"),
        "{mirror}"
    );
    assert!(
        listed["mirrors"][0]["next_run"].is_string() && mirror["next"] != "—",
        "next run shown: {mirror}"
    );
    // The link opens that job.
    browser
        .click(r#"#mirrors tr[data-mirror="app-mirror"] a.job-link"#)
        .await;
    browser
        .wait_for(
            "the mirror's job selected from its row",
            WAIT,
            &format!("{DETAIL_FN} const d = detail(); return d && d.id === {last} && d.state === 'succeeded';"),
        )
        .await;
    skopeo::assert_digest(&dst, "mirror/app:v1", &mirrored.digest).await;

    // A job that fails at once (no such tag), then the slowed one.
    let dst_repo = format!("{}/{REPO}", dst.host());
    let failed = start_job(
        &service,
        &format!("{}/{REPO}:nope", proxy.host()),
        &dst_repo,
    )
    .await;
    let target = format!("{}/{REPO}:v1", dst.host());
    let id = start_job(&service, &format!("{}/{REPO}:v1", proxy.host()), &target).await;
    let row = format!(r#"[data-job-id="{id}"]"#);
    browser
        .wait_for(
            "the new job in the list",
            WAIT,
            &format!("return document.querySelector('{row}') !== null"),
        )
        .await;
    browser.click(&row).await;

    // Seen running, part of the bytes there, with its cancel button.
    let running = browser
        .wait_for(
            "the job running with part of its bytes",
            WAIT,
            &format!(
                "{DETAIL_FN} const d = detail(); return d && d.id === {id} && d.state === 'running' \
                 && d.bytes[0] > 0 && d.bytes[0] < d.bytes[1] ? d : null;"
            ),
        )
        .await;
    eprintln!("mid-transfer: {running}");
    assert_eq!(
        running["cancel_shown"], true,
        "a running job can be cancelled"
    );
    browser.screenshot(&shots.join("running.png")).await;

    // Then done: every byte and blob, the same counts the API gives, and the log lines
    // (fetched with the job once it has ended: the listing leaves them out).
    let done = browser
        .wait_for(
            "the job to end and its log to show",
            WAIT,
            &format!("{DETAIL_FN} const d = detail(); return d && d.state !== 'running' && d.state !== 'queued' && d.log ? d : null;"),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let job = get_job(&service, id).await;
    let progress = &job["progress"];
    assert_eq!(
        done["bytes"],
        json!([progress["bytes_done"], progress["bytes_total"]])
    );
    assert_eq!(
        done["blobs"],
        json!([progress["blobs_done"], progress["blobs_total"]])
    );
    assert_eq!(
        done["bytes"][0], done["bytes"][1],
        "bytes done == total: {done}"
    );
    assert_eq!(
        done["blobs"][0], done["blobs"][1],
        "blobs done == total: {done}"
    );
    assert_eq!(
        done["bytes"][1],
        json!(pushed.blob_bytes()),
        "every blob of the image"
    );
    assert_eq!(done["blobs"][1], json!(pushed.blobs.len()));
    let log = done["log"].as_str().unwrap();
    assert_eq!(
        log,
        job["result"]["rsync_data"]["rsync_info"].as_str().unwrap(),
        "the page shows the job's log lines as they are"
    );
    assert!(
        log.contains("Finished, 0 sync tasks failed, 0 tasks generate failed"),
        "{log}"
    );
    assert_eq!(done["cancel_shown"], false, "nothing to cancel once ended");
    let row_state = browser
        .execute(&format!(
            "return document.querySelector('{row} .state').textContent"
        ))
        .await;
    assert_eq!(row_state, "succeeded");
    skopeo::assert_digest(&dst, &format!("{REPO}:v1"), &pushed.digest).await;

    // The failed job, selected: its state and error sentence.
    browser.click(&format!(r#"[data-job-id="{failed}"]"#)).await;
    let failure = browser
        .wait_for(
            "the failed job's details",
            WAIT,
            &format!("{DETAIL_FN} const d = detail(); return d && d.id === {failed} && d.error ? d : null;"),
        )
        .await;
    assert_eq!(failure["state"], "failed", "{failure}");

    // Back to the finished one for the picture, then a third job cancelled from the page.
    browser.click(&row).await;
    browser
        .wait_for(
            "the succeeded job selected",
            WAIT,
            &format!("{DETAIL_FN} return detail().id === {id};"),
        )
        .await;
    browser.screenshot(&shots.join("dashboard.png")).await;
    let doomed = start_job(&service, &format!("{}/{REPO}:v2", proxy.host()), &dst_repo).await;
    let doomed_row = format!(r#"[data-job-id="{doomed}"]"#);
    browser
        .wait_for(
            "the third job",
            WAIT,
            &format!("return document.querySelector('{doomed_row}') !== null"),
        )
        .await;
    browser.click(&doomed_row).await;
    browser
        .wait_for(
            "the third job running",
            WAIT,
            &format!("{DETAIL_FN} const d = detail(); return d && d.id === {doomed} && d.state === 'running' && d.cancel_shown;"),
        )
        .await;
    browser.click("#job-cancel").await;
    let cancelled = browser
        .wait_for(
            "the third job cancelled",
            WAIT,
            &format!("{DETAIL_FN} const d = detail(); return d && d.id === {doomed} && d.state === 'cancelled' ? d : null;"),
        )
        .await;
    assert_eq!(cancelled["cancel_shown"], false);
    let job = get_job(&service, doomed).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["cancelled_by"], "admin");

    // A narrow window (Chromium's smallest is 500 px): one column, nothing wider than it.
    browser.set_window_size(400, 900).await;
    let overflow = browser
        .wait_for(
            "the narrow layout",
            WAIT,
            "return window.innerWidth <= 600 ? [document.documentElement.scrollWidth, window.innerWidth] : null",
        )
        .await;
    assert!(
        overflow[0].as_u64() <= overflow[1].as_u64(),
        "page wider than a narrow window (scrollWidth, innerWidth): {overflow}"
    );
    browser.screenshot(&shots.join("narrow.png")).await;

    if let Some(dir) = std::env::var_os("IMAGERSYNC_DASHBOARD_SHOTS") {
        for name in ["running.png", "dashboard.png", "narrow.png"] {
            std::fs::copy(shots.join(name), std::path::Path::new(&dir).join(name))
                .expect("copy screenshot");
        }
    }
}

/// POSTs an async sync as `admin`; returns the job id from the 202.
async fn start_job(service: &Service, source: &str, target: &str) -> i64 {
    let body = json!({"rsync_config": {"source": source, "target": target}, "async": true});
    let (status, job) = service.post_json(Some(&admin()), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_i64().expect("job id")
}

/// The job as the API shows it.
async fn get_job(service: &Service, id: i64) -> Value {
    let path = format!("/v1/image/rsync/jobs/{id}");
    let (status, job) = service
        .call_json(reqwest::Method::GET, &path, &admin())
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job
}
