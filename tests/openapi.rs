//! The OpenAPI document: generated from the code, every route and every problem response
//! documented, snapshot-tested so it cannot drift silently (`cargo insta review` after an
//! intended change).

use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(&tessera::http::openapi::DOCUMENT_JSON).expect("valid JSON")
}

#[test]
fn the_document_matches_its_snapshot() {
    insta::assert_json_snapshot!("openapi", document());
}

#[test]
fn every_route_is_documented_with_its_problem_responses() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let expected = [
        ("post", "/api/auth/register"),
        ("post", "/api/auth/login"),
        ("post", "/api/auth/login/mfa"),
        ("post", "/api/auth/logout"),
        ("get", "/api/auth/session"),
        ("get", "/api/user/profile"),
        ("post", "/api/user/profile/password"),
        ("get", "/api/user/profile/security-events"),
        ("get", "/api/user/profile/sessions"),
        ("delete", "/api/user/profile/sessions/{id}"),
        ("post", "/api/user/profile/sessions/revoke-others"),
        ("get", "/api/user/profile/mfa"),
        ("post", "/api/user/profile/mfa/setup"),
        ("post", "/api/user/profile/mfa/verify"),
        ("post", "/api/user/profile/mfa/backup-codes"),
        ("post", "/api/user/profile/mfa/disable"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/api/openapi.json"),
        ("get", "/problems/{slug}"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(),
        expected.len()
    );
    for (method, path) in expected {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let responses = operation["responses"].as_object().unwrap();
        for status in ["500", "503"] {
            let problem = &responses[status]["content"]["application/problem+json"]["schema"]["$ref"];
            assert_eq!(problem, "#/components/schemas/Problem", "{method} {path} {status}");
        }
        if operation.get("requestBody").is_some() {
            for status in ["400", "413", "415"] {
                assert!(responses.contains_key(status), "{method} {path} lacks {status}");
            }
        }
        if operation.get("security").is_some() {
            assert!(responses.contains_key("401"), "{method} {path} lacks 401");
        }
    }
}

#[test]
fn the_seed_endpoints_carry_the_seed_schemas() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let verify = &schemas["VerifyResponse"];
    let mut required: Vec<&str> = verify["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["backup_codes", "message", "success"]);
    assert_eq!(
        schemas["BackupCodesResponse"]["required"],
        serde_json::json!(["backup_codes"])
    );
    let problem = &schemas["Problem"]["properties"];
    for member in [
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "error",
        "details",
        "requestId",
    ] {
        assert!(problem[member].is_object(), "Problem lacks {member}");
    }
    assert_eq!(problem["type"]["format"], "uri-reference");
    assert_eq!(problem["details"]["additionalProperties"]["type"], "string");
    let verify_op = &doc["paths"]["/api/user/profile/mfa/verify"]["post"];
    assert_eq!(
        verify_op["summary"],
        "Verifies MFA setup with TOTP code and enables MFA"
    );
    assert_eq!(verify_op["responses"]["200"]["description"], "MFA enabled");
    let regen = &doc["paths"]["/api/user/profile/mfa/backup-codes"]["post"];
    assert_eq!(
        regen["summary"],
        "Regenerates MFA backup codes. Requires password and current MFA code"
    );
    assert_eq!(regen["responses"]["200"]["description"], "Backup codes regenerated");
}

#[test]
fn every_operation_that_can_answer_429_documents_it_with_retry_after() {
    let doc = document();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let secured = operation.get("security").is_some();
            // The per-address budget covers every unauthenticated route but the health checks,
            // and every authenticated write; the account throttle answers within those.
            let limited = if secured {
                method != "get"
            } else {
                path != "/healthz" && path != "/readyz"
            };
            let responses = operation["responses"].as_object().unwrap();
            if !limited {
                assert!(!responses.contains_key("429"), "{method} {path} is not limited");
                continue;
            }
            let throttled = &responses
                .get("429")
                .unwrap_or_else(|| panic!("{method} {path} lacks 429"));
            assert_eq!(
                throttled["headers"]["Retry-After"]["schema"]["type"], "integer",
                "{method} {path}"
            );
            if operation.get("requestBody").is_some() {
                assert!(responses.contains_key("408"), "{method} {path} lacks 408");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 11,
        "register, login, login/mfa, the spec, problem pages, 6 writes"
    );
    let setup = &doc["paths"]["/api/user/profile/mfa/setup"]["post"]["responses"]["429"]["description"];
    assert!(setup.as_str().unwrap().contains("for this account"), "{setup}");
}
