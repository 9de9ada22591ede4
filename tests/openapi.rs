//! The API contract: the committed OpenAPI document is the one the code generates, the
//! running server serves that same document, and every documented route is routed.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Install, http};

const COMMITTED: &str = include_str!("../openapi/devid.json");

#[test]
fn committed_openapi_is_current() {
    let generated = devid_api_json();
    assert!(
        generated.trim() == COMMITTED.trim(),
        "openapi/devid.json is stale: run `cargo run -q -- openapi > openapi/devid.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(COMMITTED).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "OpenAPI 3.1");
}

fn devid_api_json() -> String {
    let out = std::process::Command::new(common::devid_bin()).arg("openapi").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_server_serves_the_committed_spec_and_every_route() {
    let install = Install::new(Backend::Sqlite).await;
    let server = install.serve();
    let client = http();
    let served: serde_json::Value =
        client.get(server.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let committed: serde_json::Value = serde_json::from_str(COMMITTED).unwrap();
    assert_eq!(served, committed, "the server serves the committed document");

    let issuing_id = server.banner.iter().find_map(|l| l.strip_prefix("issuing CA: ")).unwrap().to_string();
    let paths = committed["paths"].as_object().unwrap();
    assert!(!paths.is_empty());
    for (path, ops) in paths {
        let concrete = if path.starts_with("/crl/") {
            path.replace("{file}", &format!("{issuing_id}.crl"))
        } else {
            path.replace("{file}", &format!("{issuing_id}.cer")).replace("{request}", "MAo%3D")
        };
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r =
                client.request(m, server.url(&concrete)).json(&serde_json::json!({})).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
            // Routed: neither the unknown-route fallback nor a method mismatch.
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !(status == 404
                    && body["type"] == "urn:devid:problem:not-found"
                    && body["detail"] == "no such route"),
                "{method} {path} is documented but not routed"
            );
            // Every documented status of this operation is declared.
            let declared: Vec<String> =
                ops[method]["responses"].as_object().unwrap().keys().cloned().collect();
            assert!(
                declared.contains(&status.to_string()),
                "{method} {path} answered {status}, not in {declared:?}"
            );
        }
    }
    drop(server);
    install.cleanup().await;
}

/// The access table and the committed document agree: every documented operation has an
/// entry in `ACCESS` and every entry is documented; protected operations declare the
/// `bearer` security requirement and the table's roles in `x-devid-roles`; public ones
/// declare no bearer requirement.
#[test]
fn access_table_matches_the_committed_document() {
    use devid_api::auth::{ACCESS, Access, openapi_path};
    let doc: serde_json::Value = serde_json::from_str(COMMITTED).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys().filter(|k| METHODS.contains(&k.as_str())) {
            let upper = method.to_uppercase();
            assert!(
                ACCESS.iter().any(|(m, r, _)| *m == upper && openapi_path(r) == *path),
                "{upper} {path} is documented but has no entry in ACCESS"
            );
        }
    }
    assert!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("bearer"),
        "the bearer security scheme is declared"
    );
    for (method, route, access) in ACCESS {
        let path = openapi_path(route);
        let op = &doc["paths"][&path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {route} is in ACCESS but not documented");
        let roles: Vec<&str> = op["x-devid-roles"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no x-devid-roles"))
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let bearer =
            op["security"].as_array().is_some_and(|reqs| reqs.iter().any(|r| r.get("bearer").is_some()));
        match access {
            Access::Public => {
                assert!(roles.is_empty(), "{method} {path} is public but lists roles {roles:?}");
                assert!(!bearer, "{method} {path} is public but asks for a bearer token");
            }
            Access::ClientCertificate => {
                assert_eq!(op["security"], serde_json::json!([{"deviceCertificate": []}]), "{method} {path}");
            }
            Access::Roles(want) => {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path} must declare the bearer requirement"
                );
                let want: Vec<&str> = want.iter().map(|r| r.as_str()).collect();
                assert_eq!(roles, want, "{method} {path}: x-devid-roles");
            }
        }
    }
}
