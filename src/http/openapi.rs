//! `GET /openapi.json`: the OpenAPI 3.1 description of the API. The file is
//! `doc/openapi.json`, compiled in, so the served copy and the documented one are the
//! same bytes.

use axum::http::header;
use axum::response::IntoResponse;

/// The OpenAPI document.
pub const SPEC: &str = include_str!("../../doc/openapi.json");

/// `GET /openapi.json`.
pub async fn spec() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
}

// The schema checker is shared with the integration suite (tests/it/openapi.rs), which
// checks answers that need real registries: a successful sync, a job with progress.
#[cfg(test)]
#[path = "../../tests/it/common/schema.rs"]
mod schema;

#[cfg(test)]
mod tests {
    //! The description against the router: it parses, every `$ref` resolves, every
    //! route the router serves is described with exactly the methods it takes, and the
    //! JSON the service really answers fits the described schemas.

    use std::collections::BTreeSet;
    use std::path::Path;

    use axum::body::{to_bytes, Body};
    use axum::http::{header, Method, Request, StatusCode};
    use axum::Router;
    use base64::Engine as _;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use super::schema::{fits, resolve};
    use super::SPEC;
    use crate::analysis_log::AnalysisLog;
    use crate::config::Config;
    use crate::engine::Engine;
    use crate::http::router::routes;
    use crate::http::{router, AppState};

    /// Methods probed on every path; `HEAD` follows `GET` and is not described apart.
    const METHODS: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];

    fn spec() -> Value {
        serde_json::from_str(SPEC).expect("doc/openapi.json is JSON")
    }

    fn state(dir: &Path) -> AppState {
        let yaml = "rsyncserver:\n  auth: {admin: admin}\n  admins: [admin]\n";
        let config = Config::from_yaml(yaml, Path::new("test.yaml")).unwrap();
        AppState::new(
            &config,
            Engine::new(&config.rsyncserver.rsyncconfig),
            AnalysisLog::open(dir.join("analysis.log")).unwrap(),
            std::sync::Arc::new(crate::jobs::SqliteStore::in_memory().unwrap()),
        )
    }

    async fn call(app: &Router, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
        let auth = base64::engine::general_purpose::STANDARD.encode("admin:admin");
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Basic {auth}"))
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn described_methods(spec: &Value, path: &str) -> BTreeSet<String> {
        let item = resolve(spec, &spec["paths"][path]);
        METHODS
            .iter()
            .map(|m| m.as_str().to_ascii_lowercase())
            .filter(|m| item.get(m).is_some())
            .collect()
    }

    #[test]
    fn the_spec_parses_and_every_ref_resolves() {
        let spec = spec();
        assert_eq!(spec["openapi"], "3.1.0");
        assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
        fn walk(spec: &Value, v: &Value) {
            match v {
                Value::Object(map) => {
                    if v.get("$ref").is_some() {
                        resolve(spec, v);
                    }
                    map.values().for_each(|child| walk(spec, child));
                }
                Value::Array(items) => items.iter().for_each(|child| walk(spec, child)),
                _ => {}
            }
        }
        walk(&spec, &spec);
        for (path, item) in spec["paths"].as_object().unwrap() {
            let item = resolve(&spec, item);
            for method in described_methods(&spec, path) {
                let op = &item[&method];
                assert!(op["summary"].is_string(), "{method} {path}: no summary");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}: no responses"
                );
            }
        }
    }

    #[tokio::test]
    async fn every_route_is_described_with_the_methods_it_takes() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let served: BTreeSet<String> = routes(&state).into_iter().map(|(p, _)| p).collect();
        let app = router(state);
        let spec = spec();
        let described: BTreeSet<String> =
            spec["paths"].as_object().unwrap().keys().cloned().collect();
        let undocumented: Vec<_> = served.difference(&described).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in doc/openapi.json: {undocumented:?}"
        );
        for path in &described {
            assert!(
                served.contains(path),
                "{path} is in doc/openapi.json but the router does not serve it"
            );
            let uri = path.replace("{id}", "1");
            let wanted = described_methods(&spec, path);
            for method in METHODS {
                // An empty body: a POST is refused as unusable before any sync starts.
                let (status, body) = call(&app, method.clone(), &uri, "").await;
                let routed = !(status == StatusCode::NOT_FOUND
                    && body["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("no such route")));
                assert!(routed, "{method} {uri}: the router does not know the path");
                let name = method.as_str().to_ascii_lowercase();
                assert_eq!(
                    status != StatusCode::METHOD_NOT_ALLOWED,
                    wanted.contains(&name),
                    "{method} {path}: answered {status}, described methods {wanted:?}"
                );
            }
        }
    }

    fn schema(name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    #[tokio::test]
    async fn real_answers_fit_the_described_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        let spec = spec();
        let check = |name: &str, value: &Value| {
            if let Err(e) = fits(&spec, &schema(name), value, name) {
                panic!("{e}\n{value:#}");
            }
        };
        // A reference the engine refuses without contacting anything: a real job that
        // ends at once, as `failed` with a 400 result.
        let body = r#"{"rsync_config":{"source":"Bad Reference!!","target":"x/y:1"},"async":true}"#;
        let (status, job) = call(&app, Method::POST, "/v1/image/rsync", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        check("Job", &job);
        let uri = job["links"]["self"].as_str().unwrap().to_owned();
        let mut done = Value::Null;
        for _ in 0..200 {
            let (_, job) = call(&app, Method::GET, &uri, "").await;
            if job["finished_at"].is_string() {
                done = job;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(done["result"].is_object(), "the job did not end: {done}");
        check("Job", &done);
        let (_, page) = call(&app, Method::GET, "/v1/image/rsync/jobs", "").await;
        check("JobPage", &page);
        let (status, sync) = call(&app, Method::POST, "/v1/image/rsync", "{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        check("SyncResponse", &sync);
        let (_, hint) = call(&app, Method::GET, "/v1/image/rsync", "").await;
        check("UsePost", &hint);
        let (_, health) = call(&app, Method::GET, "/check", "").await;
        check("Health", &health);
        let (_, error) = call(&app, Method::GET, "/v1/image/rsync/jobs/999", "").await;
        check("Error", &error);
        // And the checker does catch a difference.
        let mut extra = done.clone();
        extra["surprise"] = json!(1);
        assert!(fits(&spec, &schema("Job"), &extra, "Job").is_err());
    }

    #[tokio::test]
    async fn the_served_spec_is_the_doc_file() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        let request = Request::get("/openapi.json").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert_eq!(bytes, SPEC.as_bytes());
    }
}
